"""GGUF export: merged model → f16 (llama.cpp's converter) → Q8_0 / Q4_K_M (llama.cpp's quantizer).

llama.cpp's python scripts run as subprocesses with the image's own copy of gguf-py on
PYTHONPATH (the PyPI `gguf` may not match the vendored llama.cpp). An Ollama Modelfile is
written beside each GGUF.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import temp_path_for, write_text_atomic
from gapforge_runtime.image_contract import LLAMA_CPP_DIR, LLAMA_CPP_ENV

FTYPES = {"gguf:q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "gguf:q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
MARKERS = {"system": "\x01SYSTEM\x01", "user": "\x01PROMPT\x01", "assistant": "\x01RESPONSE\x01"}


def check_llama_cpp(folder: Path | None) -> Path:
    """The llama.cpp scripts folder, with its converters and gguf-py."""
    if folder is None or not (folder / "convert_hf_to_gguf.py").is_file():
        raise RuntimeFailure(
            f"--llama-cpp {folder}: llama.cpp's conversion scripts are not there (convert_hf_to_gguf.py "
            "is missing). Pass --llama-cpp DIR (a llama.cpp source tree matching llama-cpp-python), "
            f"or set ${LLAMA_CPP_ENV}; in the image it is {LLAMA_CPP_DIR}."
        )
    return folder


def _run_script(llama_cpp: Path, script: str, args: list[str], what: str) -> None:
    # The vendored gguf-py first: the PyPI `gguf` may not match this llama.cpp.
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp / 'gguf-py'}:{llama_cpp}"}
    command = [sys.executable, str(llama_cpp / script), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise RuntimeFailure(
            f"{what} failed: {script} exited with status {result.returncode}. Its last output:\n{tail}\n"
            "Check that --llama-cpp matches the installed llama-cpp-python and supports this architecture."
        )


def convert_to_f16(llama_cpp: Path, merged_dir: Path, out_file: Path) -> None:
    """The merged HF model as a GGUF f16 file."""
    tmp = temp_path_for(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _run_script(
        llama_cpp,
        "convert_hf_to_gguf.py",
        [str(merged_dir), "--outfile", str(tmp), "--outtype", "f16"],
        "GGUF f16 conversion",
    )
    os.replace(tmp, out_file)


def convert_adapter(llama_cpp: Path, adapter_dir: Path, base_dir: Path, out_file: Path) -> None:
    """The LoRA adapter alone as GGUF (llama.cpp `--lora`)."""
    tmp = temp_path_for(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _run_script(
        llama_cpp,
        "convert_lora_to_gguf.py",
        [str(adapter_dir), "--base", str(base_dir), "--outfile", str(tmp), "--outtype", "f16"],
        "adapter GGUF conversion",
    )
    os.replace(tmp, out_file)


def quantize_gguf(source: Path, target: str, out_file: Path) -> None:
    """Quantize a GGUF file through llama-cpp-python's binding of llama_model_quantize."""
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeFailure(
            "llama-cpp-python is not installed, so GGUF quantization is impossible. Install the "
            "image's locked llama-cpp-python, or keep only gguf:f16 in the recipe's quantize list."
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[target])
    params.nthread = os.cpu_count() or 1
    tmp = temp_path_for(out_file)
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(tmp).encode(), ctypes.byref(params)
    )
    if status != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise RuntimeFailure(
            f"quantizing {source} to {target} failed (llama_model_quantize returned {status})."
        )
    os.replace(tmp, out_file)


def _split(text: str, marker: str) -> tuple[str, str]:
    head, _, tail = text.partition(marker)
    return head, tail


def ollama_template(tokenizer: Any) -> tuple[str, list[str]]:
    """An Ollama TEMPLATE (Go template) and stop strings, derived by rendering the chat template.

    The chat template is rendered with marker contents; the text around the markers becomes the
    literal text of the Go template. Exact for one-turn prompts with or without a system prompt.
    """
    eos = tokenizer.eos_token or ""
    if not getattr(tokenizer, "chat_template", None):
        return "{{ .Prompt }}", [eos] if eos else []
    render = tokenizer.apply_chat_template
    sys_m, user_m, resp_m = MARKERS["system"], MARKERS["user"], MARKERS["assistant"]
    with_system = render(
        [{"role": "system", "content": sys_m}, {"role": "user", "content": user_m}],
        tokenize=False,
        add_generation_prompt=True,
    )
    sys_head, rest = _split(with_system, sys_m)
    sys_to_user, after_prompt = _split(rest, user_m)
    plain = render(
        [{"role": "user", "content": user_m}], tokenize=False, add_generation_prompt=True
    )
    no_sys_head, _ = _split(plain, user_m)
    answered = render(
        [{"role": "user", "content": user_m}, {"role": "assistant", "content": resp_m}],
        tokenize=False,
        add_generation_prompt=False,
    )
    _, end_of_answer = _split(answered, resp_m)
    template = (
        f"{{{{ if .System }}}}{sys_head}{{{{ .System }}}}{sys_to_user}"
        f"{{{{ else }}}}{no_sys_head}{{{{ end }}}}"
        f"{{{{ .Prompt }}}}{after_prompt}{{{{ .Response }}}}{end_of_answer}"
    )
    stops = [s for s in dict.fromkeys([eos, end_of_answer.strip()]) if s]
    return template, stops


def modelfile_string(value: str, field: str, triple: bool = False) -> str:
    """`value` as one Ollama Modelfile string, or RuntimeFailure naming `field`.

    Ollama's parser ends a value at the first line break where the value's quotes look closed (it
    ends in `"`, or in three for one that opened with three), and silently drops characters it
    cannot print. So a value with no double quote may be written in
    double quotes; one with a double quote but never three in a row, in triple quotes (where a
    closing quote can only be the last three); anything else is refused rather than written as
    something Ollama would read differently.
    """
    for char in value:
        if not (unicodedata.category(char)[0] in "LMNPS" or char in " \t\n\r"):
            raise RuntimeFailure(
                f"Modelfile {field}: {value!r:.80} holds U+{ord(char):04X}, a character Ollama's "
                "parser would silently drop (it keeps letters, marks, numbers, punctuation, "
                "symbols and whitespace); the tokenizer's chat template or end-of-sequence token "
                "must not hold one"
            )
    if '"' not in value and not triple:
        return f'"{value}"'
    if '"""' not in value:
        return f'"""{value}"""'
    raise RuntimeFailure(
        f"Modelfile {field}: {value!r:.80} holds three double quotes in a row, which no Ollama "
        "string can carry; the tokenizer's chat template or end-of-sequence token must not hold them"
    )


def write_modelfile(gguf_file: Path, template: str, stops: list[str]) -> Path:
    """An Ollama Modelfile beside `gguf_file` (FROM, TEMPLATE, PARAMETER stop), every value quoted."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", gguf_file.name):
        raise RuntimeFailure(
            f"Modelfile FROM: {gguf_file.name!r} is not a plain file name (letters, digits, '.', "
            "'_', '-'): the recipe's name makes it, and recipe names are slugs"
        )
    lines = [
        f"FROM ./{gguf_file.name}",
        f"TEMPLATE {modelfile_string(template, 'TEMPLATE', triple=True)}",
    ]
    lines += [f"PARAMETER stop {modelfile_string(stop, 'PARAMETER stop')}" for stop in stops]
    path = gguf_file.with_suffix(".Modelfile")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
