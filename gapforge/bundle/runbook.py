"""RUNBOOK.md: the operator's exact commands for one bundle, rendered from images/templates/.

An operator copies these commands into a shell, so what the template prints is held to two rules
(Jinja's autoescape is off: this is Markdown): no value may hold a control or line-separator
character (`finalize` refuses one, so nothing can end a line, a table row or a code block early),
and every value inside a shell command goes through the `sh` filter (`shlex.quote`; a test holds
the template to it). Free text (the recipe's description, the pretest's gate details) is folded
onto one line first, since a line break in it means nothing to Markdown's tables and paragraphs.
"""

from __future__ import annotations

import json
import shlex
import unicodedata
from pathlib import Path
from typing import Any

import jinja2

from gapforge.bundle.source import BundleSource
from gapforge.errors import BundleError
from gapforge.fetch.rootfs import HOME, IMAGE_USER, USER_ID
from gapforge.profile import REPO_ROOT

TEMPLATES = REPO_ROOT / "images" / "templates"
TEMPLATE = "RUNBOOK.md.j2"
GGUF_TARGETS = {
    "gguf:f16": ("f16", "the merged model in GGUF f16 (what the quantizations are made from)"),
    "gguf:q8_0": ("q8_0", "GGUF Q8_0: near-lossless, about half the size of f16"),
    "gguf:q4_k_m": (
        "q4_k_m",
        "GGUF Q4_K_M: the smallest; check its perplexity delta in the report",
    ),
}


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def gguf_files(name: str, targets: list[str]) -> dict[str, str]:
    """Output file name → what it is, for the recipe's quantization targets."""
    files = {f"{name}-f16.gguf": GGUF_TARGETS["gguf:f16"][1]}
    for target in targets:
        if target in GGUF_TARGETS and target != "gguf:f16":
            suffix, text = GGUF_TARGETS[target]
            files[f"{name}-{suffix}.gguf"] = text + f" (Ollama: `{name}-{suffix}.Modelfile`)"
    files[f"{name}-adapter-f16.gguf"] = "the LoRA adapter alone, GGUF (llama.cpp --lora)"
    return files


def runbook_context(source: BundleSource, fingerprint: str, wheel_count: int) -> dict[str, Any]:
    """The template's variables, from the bundle's source and its pretest evidence."""
    recipe = json.loads(source.recipe_files["recipe.json"])
    evidence = json.loads((source.pretest_dir / "evidence.json").read_text(encoding="utf-8"))
    image = source.image
    return {
        "name": source.name,
        "version": source.version,
        "description": one_line(source.description),
        "bundle_dir": source.bundle_name,
        "profile": image.profile,
        "cuda": image.profile.startswith("cuda"),
        "python": "3.11",
        "builder_version": source.builder_version,
        "image": {
            "ref": image.ref,
            "manifest_digest": image.manifest_digest,
            "config_digest": image.config_digest,
            "tar_sha256": image.tar_sha256,
            "size_human": human_size(image.tar.stat().st_size),
        },
        "key": {"fingerprint": fingerprint, "fingerprint_hex": fingerprint.removeprefix("sha256:")},
        "model": {
            "id": source.model.id,
            "source_type": source.model.source.get("type", ""),
            "revision": source.model.revision,
        },
        "data_format": recipe.get("data", {}).get("format", "jsonl"),
        "gguf_files": gguf_files(source.name, list(recipe.get("quantize", []))),
        "pretest": {
            "verdict": evidence.get("verdict", "UNKNOWN"),
            "seconds": evidence.get("seconds", 0),
            "steps": evidence.get("steps", {}),
            "gates": [
                {
                    **gate,
                    "name": one_line(str(gate.get("name", ""))),
                    "detail": one_line(str(gate.get("detail", ""))),
                }
                for gate in evidence.get("gates", [])
            ],
        },
        "wheel_count": wheel_count,
        "debian": {
            "suite": source.debian_suite,
            "snapshot": source.debian_snapshot or "not recorded",
            "refreshes": list(source.debian_refreshes),
        },
        "builder_commit": source.git.get("commit", ""),
        "user": {"id": USER_ID, "spec": IMAGE_USER, "home": HOME},
    }


def one_line(text: str) -> str:
    """Free text folded onto one line: every run of whitespace (line breaks included) as one space."""
    return " ".join(text.split())


def printable(value: object) -> object:
    """Jinja's finalize: a value as it is, or BundleError if it holds a control character."""
    if isinstance(value, str):
        for char in value:
            if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
                raise BundleError(
                    f"RUNBOOK.md: the value {value!r:.80} holds a control character "
                    f"(U+{ord(char):04X}), which would end a line of the operator's commands "
                    "early; the recipe, lock or pretest evidence it came from must not hold one"
                )
    return value


def render_runbook(context: dict[str, Any], templates: Path = TEMPLATES) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML: quoting is `finalize` and the `sh` filter
        finalize=printable,
    )
    environment.filters["sh"] = lambda value: shlex.quote(str(value))
    return environment.get_template(TEMPLATE).render(**context)
