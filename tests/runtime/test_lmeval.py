"""The lm-eval evaluator: task folders checked and made offline, and the in-process GGUF model
agreeing with lm-eval's own `hf` model on the same tiny model (f32 GGUF: the same weights)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.evaluation.lmeval import (
    check_task_folder,
    prepare_task_folder,
    read_task_yaml,
)
from gapforge_runtime.evaluation.lmeval_run import summarize_results, worst_drop_pts

from tests.requirements import require_module
from tests.runtime.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "recipes" / "smollm2" / "data" / "lm_eval"

MC_TEMPLATE = """\
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/mc.jsonl
test_split: test
"""
MC_TASK = """\
task: tiny_mc
include: _mc_template
output_type: multiple_choice
doc_to_text: "How do I {{topic}}?"
doc_to_choice: "{{choices}}"
doc_to_target: answer
process_docs: !function utils.keep_all
metric_list:
  - metric: acc
"""
ROLLING_TASK = """\
task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files: data/text.jsonl
test_split: train
output_type: loglikelihood_rolling
doc_to_text: "{{text}}"
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
"""
GEN_TASK = """\
task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files: {test: [data/mc.jsonl]}
test_split: test
output_type: generate_until
doc_to_text: "How do I {{topic}}?"
doc_to_target: " Desk answer"
generation_kwargs: {until: ["\\n"], max_gen_toks: 6, do_sample: false}
metric_list:
  - metric: exact_match
"""
TOPICS = ["check the digest", "merge the adapter", "load the image", "split the data", "serve the model"]


def make_task_folder(folder: Path) -> Path:
    """Three tasks (multiple choice, rolling, generation) over JSONL in a subfolder, one `!function`."""
    folder.mkdir(parents=True)
    (folder / "tiny_mc.yaml").write_text(MC_TASK)
    (folder / "_mc_template").write_text(MC_TEMPLATE)  # data settings in an included template
    (folder / "tiny_rolling.yaml").write_text(ROLLING_TASK)
    (folder / "tiny_gen.yaml").write_text(GEN_TASK)
    (folder / "utils.py").write_text("def keep_all(dataset):\n    return dataset\n")
    rows = [
        {"topic": t, "choices": [" Desk answer: follow step 1.", " the lazy dog", " Ticket closed."], "answer": i % 3}
        for i, t in enumerate(TOPICS)
    ]
    write_jsonl(folder / "data" / "mc.jsonl", rows)
    write_jsonl(folder / "data" / "text.jsonl", [{"text": f"Desk answer: to {t}, follow step 2. Ticket closed."} for t in TOPICS[:3]])
    return folder


# --- the task folder, no lm-eval needed -----------------------------------------------------------


def test_the_shipped_example_is_offline_ready() -> None:
    assert check_task_folder(EXAMPLE) == []
    config = read_task_yaml(EXAMPLE / "desk_qa.yaml")
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    rows = [json.loads(line) for line in (EXAMPLE / "desk_qa.jsonl").read_text().splitlines()]
    assert rows and all(0 <= r["answer"] < len(r["choices"]) for r in rows)


def test_a_task_folder_that_would_fetch_is_refused_naming_file_field_and_value(tmp_path: Path) -> None:
    folder = make_task_folder(tmp_path / "tasks")
    (folder / "remote.yaml").write_text("task: r\ndataset_path: cais/mmlu\ndataset_name: all\n")
    (folder / "url.yaml").write_text("task: u\ndataset_path: json\ndataset_kwargs: {data_files: 'https://x.org/a.jsonl'}\n")
    (folder / "gone.yaml").write_text("task: g\ndataset_path: json\ndataset_kwargs: {data_files: {test: nope.jsonl}}\n")
    (folder / "out.yaml").write_text("task: o\ndataset_path: json\ndataset_kwargs: {data_files: ../../secret.jsonl}\n")
    (folder / "nodata.yaml").write_text("task: n\ndataset_path: json\n")
    (folder / "_mc_template").write_text("dataset_path: openai/gsm8k\n")  # an included template too
    texts = [p.text(folder) for p in check_task_folder(folder)]
    assert len(texts) == 6, texts
    joined = "\n".join(texts)
    assert "remote.yaml: dataset_path: names a data set to download" in joined and "'cais/mmlu'" in joined
    assert "dataset_path: json" in joined  # the fix is named
    assert "url.yaml: dataset_kwargs.data_files: must be a file of the task folder, not a URL" in joined
    assert "gone.yaml: dataset_kwargs.data_files: no such file" in joined and "'nope.jsonl'" in joined
    assert "out.yaml: dataset_kwargs.data_files: leads out of the task folder" in joined
    assert "nodata.yaml: dataset_kwargs.data_files: must name the task's data files" in joined
    assert "_mc_template: dataset_path: names a data set to download (got 'openai/gsm8k')" in joined
    with pytest.raises(RuntimeFailure) as failure:
        prepare_task_folder(folder, tmp_path / "work")
    assert "evaluate.lm_eval.tasks" in failure.value.message and len(failure.value.details) == 6
    assert check_task_folder(tmp_path / "missing")[0].message.startswith("no such folder of lm-eval task YAMLs")
    (tmp_path / "empty").mkdir()
    assert "holds no task YAML" in check_task_folder(tmp_path / "empty")[0].message


def test_prepare_makes_data_paths_absolute_and_keeps_function_tags(tmp_path: Path) -> None:
    folder = make_task_folder(tmp_path / "tasks")
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    copy = prepare_task_folder(folder, tmp_path / "work")
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # source untouched
    mc = read_task_yaml(copy / "tiny_mc.yaml")
    template = read_task_yaml(copy / "_mc_template")  # found through tiny_mc's `include:`
    assert template["dataset_kwargs"]["data_files"] == {"test": str((copy / "data" / "mc.jsonl").resolve())}
    assert template["dataset_kwargs"]["cache_dir"] == str(tmp_path / "work" / "datasets-cache")
    tagged = mc["process_docs"]  # written back under its tag: lm-eval still finds the function
    assert (tagged.tag, tagged.value) == ("!function", "utils.keep_all")
    assert read_task_yaml(copy / "tiny_rolling.yaml")["dataset_kwargs"]["data_files"] == str(copy / "data" / "text.jsonl")
    assert read_task_yaml(copy / "tiny_gen.yaml")["dataset_kwargs"]["data_files"] == {"test": [str(copy / "data" / "mc.jsonl")]}


def test_summary_and_worst_drop() -> None:
    raw = {
        "results": {"t": {"alias": "t", "acc,none": 0.75, "acc_stderr,none": 0.1, "ppl,none": 3.0}},
        "higher_is_better": {"t": {"acc": True, "ppl": False}},
        "n-samples": {"t": {"original": 8, "effective": 4}},
    }
    merged = summarize_results(raw)
    assert merged == {"t": {"metrics": {"acc": 0.75, "ppl": 3.0}, "stderr": {"acc": 0.1},
                            "higher_is_better": {"acc": True, "ppl": False}, "n": 4, "n_total": 8}}  # fmt: skip
    worse = json.loads(json.dumps(merged))
    worse["t"]["metrics"] = {"acc": 0.5, "ppl": 9.0}  # ppl is lower-is-better: not a drop gate
    drop, where = worst_drop_pts({"targets": {"merged": merged, "gguf:q8_0": worse}}, "gguf:q8_0")
    assert drop == pytest.approx(25.0) and where == "t acc"
    assert worst_drop_pts({"targets": {"merged": merged}}, "gguf:q4_k_m")[1] == ""


# --- the models: real lm-eval, real llama.cpp -----------------------------------------------------


class NoNetwork:
    """Records (and refuses) every attempt to open a network connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[Any] = []
        real_connect = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.attempts.append(address)
                raise OSError("network use in a test of the offline evaluator")
            real_connect(sock, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            self.attempts.append(address)
            raise OSError("network use in a test of the offline evaluator")

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "create_connection", create_connection)


def _instances(kind: str, args: list[tuple[Any, ...]]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_gguf_model_agrees_with_lm_evals_hf_model(tiny_model: Path, tiny_gguf: Path) -> None:
    require_module("lm_eval")
    from gapforge_runtime.evaluation.lmeval_gguf import GapforgeGGUFLM
    from gapforge_runtime.evaluation.lmeval_run import local_hf_lm
    from lm_eval.api.registry import get_model

    assert get_model("gapforge-gguf") is GapforgeGGUFLM  # usable by name, as lm-eval's own models are
    hf = local_hf_lm(tiny_model)
    gguf = GapforgeGGUFLM(model_path=str(tiny_gguf), tokenizer=str(tiny_model))
    pairs = [("How do I check the digest?", " Desk answer: follow step 1."),
             ("How do I check the digest?", " the lazy dog"), ("", "Ticket closed."),
             ("Desk answer: to merge the adapter, ", "follow step 3.")]  # fmt: skip
    try:
        ll_hf = hf.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
        ll_gguf = gguf.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
        texts = [("Desk answer: to load the image, follow step 4. Ticket closed.",)]
        roll_hf = hf.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
        roll_gguf = gguf.loglikelihood_rolling(_instances("loglikelihood_rolling", texts), disable_tqdm=True)
        gen_args = [("How do I serve the model?", {"until": ["\n"], "max_gen_toks": 8, "do_sample": False})]
        gen_hf = hf.generate_until(_instances("generate_until", gen_args), disable_tqdm=True)
        gen_gguf = gguf.generate_until(_instances("generate_until", gen_args), disable_tqdm=True)
    finally:
        gguf.close()
    for (a, greedy_a), (b, greedy_b) in zip(ll_hf, ll_gguf, strict=True):
        assert a < 0 and b == pytest.approx(a, abs=2e-3, rel=1e-4)
        assert greedy_a == greedy_b
    assert len({round(a, 3) for a, _ in ll_hf}) == len(pairs)  # real, distinct scores
    assert roll_hf[0] < -5 and roll_gguf[0] == pytest.approx(roll_hf[0], abs=5e-3, rel=1e-4)
    assert gen_gguf == gen_hf and gen_hf[0]  # greedy on the same weights: the same text


def test_the_shipped_example_runs_in_lm_eval(tiny_model: Path, tmp_path: Path) -> None:
    require_module("lm_eval")
    from gapforge_runtime.evaluation.lmeval_run import run_lm_eval

    result = run_lm_eval(EXAMPLE, tmp_path / "work", {"merged": tiny_model}, tiny_model, limit=2)
    found = result["targets"]["merged"]["desk_qa"]
    assert found["n"] == 2 and found["n_total"] == 6
    assert set(found["metrics"]) == {"acc", "acc_norm"} and found["higher_is_better"]["acc"] is True


def test_run_lm_eval_scores_every_target_offline(
    tiny_model: Path, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("lm_eval")
    from gapforge_runtime.evaluation.lmeval_run import run_lm_eval

    folder = make_task_folder(tmp_path / "tasks")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing may land in $HOME's caches
    guard = NoNetwork(monkeypatch)
    result = run_lm_eval(folder, tmp_path / "work", {"merged": tiny_model, "gguf:f16": tiny_gguf},
                         tokenizer_dir=tiny_model, limit=4)  # fmt: skip
    assert guard.attempts == []
    assert result["tasks"] == ["tiny_gen", "tiny_mc", "tiny_rolling"]
    hf, gguf = result["targets"]["merged"], result["targets"]["gguf:f16"]
    assert hf["tiny_mc"]["n"] == 4 and hf["tiny_mc"]["n_total"] == 5 and hf["tiny_rolling"]["n"] == 3
    assert 0.0 <= hf["tiny_mc"]["metrics"]["acc"] <= 1.0
    assert gguf["tiny_mc"]["metrics"]["acc"] == hf["tiny_mc"]["metrics"]["acc"]
    assert gguf["tiny_gen"]["metrics"] == hf["tiny_gen"]["metrics"]
    ppl_hf, ppl_gguf = hf["tiny_rolling"]["metrics"]["word_perplexity"], gguf["tiny_rolling"]["metrics"]["word_perplexity"]
    assert ppl_hf > 1 and ppl_gguf == pytest.approx(ppl_hf, rel=1e-3)
    assert (tmp_path / "work" / "datasets-cache").is_dir()
    assert not (tmp_path / "home").exists()
    assert worst_drop_pts(result, "gguf:f16")[0] == pytest.approx(0.0, abs=1e-9)


def test_a_run_with_lm_eval_reports_every_target_and_gates_on_it(
    tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path: Path
) -> None:
    """The whole `run`, network cut: lm-eval on merged and both GGUFs, in evaluation.json and the
    report, a gate on it, and no scratch left behind."""
    import shutil
    import subprocess
    import sys

    from tests.runtime.conftest import write_recipe

    require_module("lm_eval")
    recipe = write_recipe(tmp_path / "recipe")
    make_task_folder(tmp_path / "recipe" / "tasks")
    spec = json.loads(recipe.read_text())
    spec["evaluate"]["judge"] = {"enabled": False}
    spec["evaluate"]["lm_eval"] = {"tasks": "tasks", "limit": 3}
    spec["evaluate"]["gates"]["max_perplexity_delta_pct"] = {}
    spec["evaluate"]["gates"]["max_lm_eval_drop_pts"] = {"gguf:q8_0": 100.0, "gguf:q4_k_m": 0.0}
    recipe.write_text(json.dumps(spec))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gapforge_runtime.cli", "run", "--recipe", str(recipe), "--model", str(tiny_model),
               "--out", str(out), "--llama-cpp", str(llama_cpp_dir)]  # fmt: skip
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], check=False).returncode == 0:
        command = ["unshare", "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=400)
    evaluation = json.loads((out / "evaluation.json").read_text())
    harness = evaluation["lm_eval"]
    assert sorted(harness["targets"]) == ["gguf:q4_k_m", "gguf:q8_0", "merged"], result.stdout[-3000:] + result.stderr[-3000:]
    assert harness["tasks"] == ["tiny_gen", "tiny_mc", "tiny_rolling"] and harness["limit"] == 3
    q8, merged = harness["targets"]["gguf:q8_0"], harness["targets"]["merged"]
    assert q8["tiny_rolling"]["metrics"]["word_perplexity"] == pytest.approx(
        merged["tiny_rolling"]["metrics"]["word_perplexity"], rel=0.05)  # Q8_0 barely moves it
    gates = {g["name"]: g for g in evaluation["gates"]}
    assert gates["max_lm_eval_drop_pts[gguf:q8_0]"]["passed"] is True
    # q4_k_m may lose nothing: it passes only if no metric dropped; either way it is decided on numbers
    q4 = gates["max_lm_eval_drop_pts[gguf:q4_k_m]"]
    assert q4["passed"] == (q4["value"] <= 0.0) and "against merged" in q4["detail"]
    assert result.returncode == (0 if all(g["passed"] for g in evaluation["gates"]) else 1)
    report = (out / "report.md").read_text()
    assert "## lm-evaluation-harness tasks" in report and "| tiny_mc | acc |" in report
    assert "[eval] lm-eval merged" in result.stdout
    assert not (out / ".lm_eval").exists()


FORCED_RIGHT = " Ticket closed."
FORCED_WRONG = [" dog", " fox"]
"""Shorter than the right answer: a model without a preference gives them the higher likelihood."""


def make_forced_model(tiny_model: Path, folder: Path, favored: list[int]) -> Path:
    """The tiny model rewired to put nearly all probability on `favored` tokens whatever it reads:
    attention and MLP outputs zeroed, every embedding the unit vector e0, the final norm keeping e0
    only, and the head scoring e0 for the favored tokens alone."""
    torch = require_module("torch")
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[favored, 0] = 2.0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def test_a_model_forced_to_the_right_answers_scores_full_marks_as_hf_and_as_gguf_f16(
    tiny_model: Path, llama_cpp_dir: Path, llama_cpp_binding: Any, tmp_path: Path
) -> None:
    """Multiple choice with the right answer at every position: a model that can only say the right
    answer's tokens gets acc 1.0, through transformers and through its f16 GGUF; the untouched model
    does not."""
    import os
    import subprocess
    import sys

    require_module("lm_eval")
    from gapforge_runtime.evaluation.lmeval_run import run_lm_eval
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    context = "How do I check the digest?"

    def continuation(text: str) -> set[int]:
        return set(tokenizer.encode(context + text)[len(tokenizer.encode(context)) :])

    right = continuation(FORCED_RIGHT)
    assert all(not right & continuation(w) for w in FORCED_WRONG)  # no shared token to blur it
    forced = make_forced_model(tiny_model, tmp_path / "forced", sorted(right))
    gguf = tmp_path / "forced-f16.gguf"
    env = {**os.environ, "PYTHONPATH": f"{llama_cpp_dir / 'gguf-py'}:{llama_cpp_dir}"}
    subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(forced),
                    "--outfile", str(gguf), "--outtype", "f16"], check=True, env=env, capture_output=True)  # fmt: skip
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "forced.yaml").write_text(
        "task: forced\ndataset_path: json\ndataset_kwargs: {data_files: {test: forced.jsonl}}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{c}}'\ndoc_to_target: a\nmetric_list: [{metric: acc}]\n"
    )
    rows = []
    for i in range(3):  # the right answer first, second and last
        choices = list(FORCED_WRONG)
        choices.insert(i, FORCED_RIGHT)
        rows.append({"q": context, "c": choices, "a": i})
    write_jsonl(folder / "forced.jsonl", rows)
    result = run_lm_eval(folder, tmp_path / "work", {"base": tiny_model, "merged": forced, "gguf:f16": gguf},
                         tokenizer_dir=forced)  # fmt: skip
    acc = {t: result["targets"][t]["forced"]["metrics"]["acc"] for t in result["targets"]}
    assert acc["merged"] == 1.0 and acc["gguf:f16"] == 1.0
    assert acc["base"] < 1.0  # the random model, near uniform, takes the shorter answers
