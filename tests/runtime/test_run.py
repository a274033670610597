"""`run` end to end on the tiny model, with its network cut: every output, the manifest's shape,
GGUF files that llama-cpp-python loads, a no-op re-run, and the errors an operator can meet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, write_jsonl, write_recipe
from gapforge_runtime.cli import main

GOLDEN = Path(__file__).parent / "golden" / "manifest_shape.json"
FREE_FORM = {("recipe",), ("libraries",)}


def manifest_shape(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Keys and value types, not values: what the golden file pins."""
    if path in FREE_FORM or (path and path[-1] in ("files", "inputs", "answers") and isinstance(value, dict)):
        return "dict"
    if isinstance(value, dict):
        return {k: manifest_shape(v, (*path, k)) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [manifest_shape(value[0], (*path, "[]"))] if value else []
    if value is None:
        return "null"
    return {bool: "bool", int: "number", float: "number", str: "str"}[type(value)]


def network_cut_available() -> bool:
    """`unshare -n` works here (root, util-linux)."""
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


def runtime_command(*args: str, offline: bool = True) -> list[str]:
    """The runtime CLI as a subprocess, inside a network namespace with no interfaces if possible."""
    command = [sys.executable, "-m", "gapforge_runtime.cli", *args]
    return ["unshare", "-n", *command] if offline and network_cut_available() else command


@pytest.fixture(scope="module")
def finished_run(tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str], list[str]]:
    """One full `run` on CPU with the network cut (the offline guarantee)."""
    root = tmp_path_factory.mktemp("run")
    recipe = write_recipe(root / "recipe")
    args = ["run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(root / "out"), "--llama-cpp", str(llama_cpp_dir)]
    result = subprocess.run(runtime_command(*args), capture_output=True, text=True, check=False, timeout=300)
    return root / "out", result, args


def test_run_end_to_end_offline(finished_run: tuple[Path, subprocess.CompletedProcess[str], list[str]]) -> None:
    out, result, _ = finished_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("adapter/adapter_model.safetensors", "merged/model.safetensors", "merged/tokenizer.json",
                 "merged/chat_template.jinja", "gguf/tiny-desk-f16.gguf", "gguf/tiny-desk-q8_0.gguf",
                 "gguf/tiny-desk-q4_k_m.gguf", "gguf/tiny-desk-adapter-f16.gguf", "gguf/tiny-desk-q8_0.Modelfile",
                 "gguf/tiny-desk-q4_k_m.Modelfile", "manifest.json", "report.md", "report.html",
                 "plots/loss.png", "plots/quality_vs_size.png", "train_log.jsonl", "data/test.jsonl"):
        assert (out / name).is_file(), name
    assert "verdict: PASS" in result.stdout
    modelfile = (out / "gguf/tiny-desk-q4_k_m.Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-desk-q4_k_m.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "{{ .Prompt }}" in modelfile
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Gates" in html and "jinja" not in html.lower()
    assert not list(out.rglob(".*tmp-*")), "no temp files left behind"


def test_manifest_shape_matches_golden(finished_run: tuple[Path, Any, Any]) -> None:
    manifest = json.loads((finished_run[0] / "manifest.json").read_text())
    assert manifest_shape(manifest) == json.loads(GOLDEN.read_text())
    assert [step["id"] for step in manifest["lineage"]] == ["base", "adapter", "merged", "gguf:f16", "gguf:q8_0", "gguf:q4_k_m", "adapter:gguf"]
    for entry in manifest["outputs"].values():
        assert len(entry["sha256"]) == 64 and entry["size"] > 0
    merged, f16 = manifest["evaluation"]["models"]["merged"], manifest["evaluation"]["models"]["gguf:f16"]
    # Same token ids, same loss formula: f16 GGUF and the merged model agree closely.
    assert abs(merged["loss"] - f16["loss"]) < 0.01
    assert manifest["evaluation"]["models"]["merged"]["loss"] < manifest["evaluation"]["models"]["base"]["loss"]


def test_gguf_files_load_and_generate(finished_run: tuple[Path, Any, Any], llama_cpp_binding: Any) -> None:
    for name in ("tiny-desk-q8_0.gguf", "tiny-desk-q4_k_m.gguf"):
        llm = llama_cpp_binding.Llama(model_path=str(finished_run[0] / "gguf" / name), n_ctx=128, verbose=False)
        out = llm.create_completion("How do I", max_tokens=8, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1
        llm.close()


def test_rerun_is_a_noop(finished_run: tuple[Path, Any, list[str]]) -> None:
    out, _, args = finished_run
    before = (out / "gguf/tiny-desk-q8_0.gguf").stat().st_mtime_ns
    result = subprocess.run(runtime_command(*args, offline=False), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("up to date") >= 5
    assert (out / "gguf/tiny-desk-q8_0.gguf").stat().st_mtime_ns == before


def test_offline_variables_and_no_network() -> None:
    if not network_cut_available():
        pytest.skip("unshare -n is not available (needs root or user namespaces)")
    probe = "import socket,os; s=socket.socket(); s.settimeout(2)\ntry:\n s.connect(('1.1.1.1',443)); print('ONLINE')\nexcept OSError: print('OFFLINE')"
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "OFFLINE"
    info = subprocess.run(runtime_command("info", "--json"), capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["offline"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --- errors: exit status 2, one paragraph, no traceback -------------------------------------------


def _fail(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_missing_and_bad_data(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path / "r")
    common = ["data", "--recipe", str(recipe), "--model", str(tiny_model)]
    err = _fail(capsys, [*common, "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o1")])
    assert "nope.jsonl: no such file" in err
    bad = write_jsonl(tmp_path / "bad.jsonl", [*chat_examples(3), "{oops", {"messages": [{"role": "bot", "content": "x"}]}])
    err = _fail(capsys, [*common, "--data", str(bad), "--out", str(tmp_path / "o2")])
    assert "line 4: not valid JSON" in err and "line 5: messages[0] has unknown role 'bot'" in err
    assert not (tmp_path / "o2" / "data").exists()


def test_output_folder_of_another_run(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path / "r")
    out = str(tmp_path / "out")
    assert main(["data", "--recipe", str(recipe), "--model", str(tiny_model), "--out", out]) == 0
    other = write_jsonl(tmp_path / "other.jsonl", chat_examples(20))
    capsys.readouterr()
    err = _fail(capsys, ["data", "--recipe", str(recipe), "--model", str(tiny_model), "--out", out, "--data", str(other)])
    assert "another run" in err and "--force" in err
    assert main(["data", "--recipe", str(recipe), "--model", str(tiny_model), "--out", out, "--data", str(other), "--force"]) == 0


def test_model_folder_problems(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path / "r")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "tokenizer.json").unlink()
    err = _fail(capsys, ["data", "--recipe", str(recipe), "--model", str(broken), "--out", str(tmp_path / "o")])
    assert "no tokenizer" in err
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    (broken / "config.json").unlink()
    err = _fail(capsys, ["data", "--recipe", str(recipe), "--model", str(broken), "--out", str(tmp_path / "o")])
    assert "config.json is missing" in err and "pickled" in err


def test_qlora_without_cuda_and_gpu_targets(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    recipe = write_recipe(tmp_path / "r", method="qlora")
    err = _fail(capsys, ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "o")])
    assert "needs a CUDA GPU" in err and not (tmp_path / "o" / "data").exists()
    data = json.loads(recipe.read_text())
    data["train"]["method"], data["quantize"] = "lora", ["gguf:q8_0", "gptq:int4"]
    recipe.write_text(json.dumps(data))
    err = _fail(capsys, ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "o2")])
    assert "gptq:int4" in err and "CUDA" in err


def test_disk_too_small(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gapforge_runtime import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 1024, 1024))  # type: ignore[attr-defined]
    recipe = write_recipe(tmp_path / "r")
    err = _fail(capsys, ["train", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(tmp_path / "o")])
    assert "MiB free" in err and "needs about" in err
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_gates_decide_pass_and_fail() -> None:
    from gapforge_runtime.evaluation.gates import decide_gates
    from gapforge_runtime.evaluation.metrics import ModelScore

    scores = {
        "base": ModelScore("base", 2.0, 7.39, 10, 1),
        "merged": ModelScore("merged", 1.0, 2.718, 10, 1),
        "gguf:q4_k_m": ModelScore("gguf:q4_k_m", 1.1, 3.004, 10, 1),
    }
    gates = decide_gates(scores, True, {"gguf:q4_k_m": 8.0, "gguf:q8_0": 1.0})
    assert [(g.name, g.passed) for g in gates] == [
        ("require_improvement", True), ("max_perplexity_delta_pct[gguf:q4_k_m]", False), ("max_perplexity_delta_pct[gguf:q8_0]", False)
    ]


if os.environ.get("GAPFORGE_WRITE_GOLDEN"):  # regenerate: GAPFORGE_WRITE_GOLDEN=1 pytest -k golden
    def test_write_golden(finished_run: tuple[Path, Any, Any]) -> None:
        manifest = json.loads((finished_run[0] / "manifest.json").read_text())
        GOLDEN.write_text(json.dumps(manifest_shape(manifest), indent=1, sort_keys=True) + "\n")


def test_a_gate_above_what_the_run_reaches_fails_it_naming_the_gate(
    tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path: Path
) -> None:
    """A win rate the fine-tune cannot reach: exit 1, the gate named, the report still written."""
    recipe = write_recipe(tmp_path / "recipe")
    spec = json.loads(recipe.read_text())
    spec["evaluate"]["judge"] = {"prompts": 2, "force": True}
    spec["evaluate"]["gates"]["min_win_rate_vs_base"] = 0.99
    recipe.write_text(json.dumps(spec))
    out = tmp_path / "out"
    args = ["run", "--recipe", str(recipe), "--model", str(tiny_model), "--out", str(out), "--llama-cpp", str(llama_cpp_dir)]
    result = subprocess.run(runtime_command(*args), capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "min_win_rate_vs_base" in result.stdout
    evaluation = json.loads((out / "evaluation.json").read_text())
    failed = [gate["name"] for gate in evaluation["gates"] if not gate["passed"]]
    assert failed == ["min_win_rate_vs_base"], evaluation["gates"]
    assert "min_win_rate_vs_base" in (out / "report.md").read_text() and (out / "report.html").is_file()
