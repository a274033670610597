"""Packed (padding-free) SFT batches: exact against padded ones, on a tiny Llama with SDPA on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import require_module
from tests.runtime.conftest import chat_examples, write_recipe


def varied_rows(count: int) -> list[dict[str, Any]]:
    """Chat samples of clearly different lengths (answers repeated 1 to 4 times)."""
    rows = chat_examples(count)
    for i, row in enumerate(rows):
        answer = row["messages"][-1]
        answer["content"] = " ".join([answer["content"]] * (1 + i % 4))
    return rows


@pytest.fixture(scope="module")
def encoded(tiny_model: Path) -> list[Any]:
    require_module("torch")
    from gapforge_runtime.data.encoding import encode_split
    from gapforge_runtime.modelio import load_tokenizer

    items, _ = encode_split(load_tokenizer(tiny_model), "chat", varied_rows(8), 160)
    assert len({len(i.input_ids) for i in items}) >= 4  # lengths really differ
    return items


def load_model(tiny_model: Path, attn: str) -> Any:
    torch = require_module("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


def token_losses(logits: Any, labels: Any) -> Any:
    """Per-position loss of predicting labels[i] from position i-1 (0 where not trained)."""
    torch = require_module("torch")
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    flat = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        shifted.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    return flat.reshape(shifted.shape)


def test_flattened_row_restarts_positions_and_hides_each_first_label(encoded: list[Any]) -> None:
    from gapforge_runtime.data.packing import flatten_batch

    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:3]]
    batch = flatten_batch(features)
    lengths = [len(e.input_ids) for e in encoded[:3]]
    assert set(batch) == {
        "input_ids",
        "labels",
        "position_ids",
    }  # no attention mask: the model builds it
    assert batch["input_ids"].shape == (1, sum(lengths))
    positions = batch["position_ids"][0].tolist()
    assert positions == [p for n in lengths for p in range(n)]
    starts = [sum(lengths[:k]) for k in range(3)]
    labels = batch["labels"][0].tolist()
    assert all(labels[s] == -100 for s in starts)
    for k, e in enumerate(encoded[:3]):
        assert labels[starts[k] + 1 : starts[k] + lengths[k]] == e.labels[1:]
    # groups under a token budget (Trainer's batch of 1) flatten the same way
    assert flatten_batch([{"examples": features}])["labels"].tolist() == batch["labels"].tolist()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_example_losses_of_a_packed_row_equal_each_example_alone(
    tiny_model: Path, encoded: list[Any], attn: str
) -> None:
    torch = require_module("torch")
    from gapforge_runtime.data.packing import flatten_examples

    model = load_model(tiny_model, attn)
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:5]]
    batch = flatten_examples(examples)
    with torch.no_grad():
        packed = token_losses(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits,
                              batch["labels"])[0]  # fmt: skip
        # the negative control: the same row with plain causal attention over all of it
        leaky = token_losses(
            model(input_ids=batch["input_ids"], use_cache=False).logits, batch["labels"]
        )[0]
        offset = 0
        leaked = 0.0
        for example in examples:
            n = len(example["input_ids"])
            alone = token_losses(model(input_ids=torch.tensor([example["input_ids"]])).logits,
                                 torch.tensor([example["labels"]]))[0]  # fmt: skip
            assert torch.allclose(packed[offset : offset + n], alone, atol=1e-5, rtol=1e-5), attn
            leaked = max(leaked, float((leaky[offset : offset + n] - alone).abs().max()))
            offset += n
    assert leaked > 1e-3  # without the per-example mask the later examples' losses do change


def test_packed_batch_loss_is_the_padded_batch_loss(tiny_model: Path, encoded: list[Any]) -> None:
    """Same examples: the model's own (token-mean) loss of the flattened row equals the padded one's."""
    torch = require_module("torch")
    from gapforge_runtime.data.packing import flatten_batch
    from gapforge_runtime.methods.sft import pad_batch

    model = load_model(tiny_model, "sdpa")
    features = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded[:4]]
    with torch.no_grad():
        padded = model(**pad_batch(features, 0)).loss
        packed = model(**flatten_batch(features), use_cache=False).loss
    assert abs(float(padded) - float(packed)) < 1e-5 * float(padded)
    # Trainer divides by the same count of predicted tokens (it counts labels[..., 1:])
    assert int((pad_batch(features, 0)["labels"][..., 1:] != -100).sum()) == int(
        (flatten_batch(features)["labels"][..., 1:] != -100).sum()
    )


def test_token_budget_groups_fit_keep_every_example_once_and_are_seeded() -> None:
    from gapforge_runtime.data.packing import token_budget_groups

    lengths = [50, 300, 120, 700, 90, 1024, 10, 400, 333, 2000]
    groups = token_budget_groups(lengths, 1024, seed=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 1024 or len(g) == 1 for g in groups)
    assert [len(g) == 1 for g in groups if sum(lengths[i] for i in g) > 1024] == [True]  # the 2000
    assert groups == token_budget_groups(lengths, 1024, seed=3)
    assert groups != token_budget_groups(lengths, 1024, seed=4)


def train_losses(tmp_path: Path, tiny_model: Path, name: str, **train: Any) -> list[float]:
    from gapforge_runtime.config import load_recipe_settings
    from gapforge_runtime.data.encoding import encode_split
    from gapforge_runtime.methods.sft import train_adapter
    from gapforge_runtime.modelio import load_tokenizer

    recipe = load_recipe_settings(
        str(write_recipe(tmp_path / name / "recipe", max_steps=6, eval_every=3, **train))
    )
    tokenizer = load_tokenizer(tiny_model)
    rows = varied_rows(20)
    train_set, _ = encode_split(tokenizer, "chat", rows[:16], 96)
    validation_set, _ = encode_split(tokenizer, "chat", rows[16:], 96)
    out = tmp_path / name
    train_adapter(recipe, tiny_model, tokenizer, train_set, validation_set, out / "checkpoints",
                  out / "adapter", out / "train_log.jsonl", resume=False)  # fmt: skip
    history = json.loads((out / "train_history.json").read_text())
    return [e["loss"] for e in history if "loss" in e] + [
        e["eval_loss"] for e in history if "eval_loss" in e
    ]


def test_a_packed_training_follows_the_padded_loss_curve(tmp_path: Path, tiny_model: Path) -> None:
    """Same examples in the same order (Trainer's seeded sampler), 6 steps and 2 evaluations."""
    require_module("torch")
    padded = train_losses(tmp_path, tiny_model, "padded", packing=False)
    packed = train_losses(tmp_path, tiny_model, "packed", packing=True)
    assert len(padded) == len(packed) == 8
    assert padded[0] != padded[-1]  # it trains
    for a, b in zip(padded, packed, strict=True):
        assert abs(a - b) <= 2e-3 * abs(a), (padded, packed)


def test_a_token_budget_training_runs_and_learns(tmp_path: Path, tiny_model: Path) -> None:
    require_module("torch")
    losses = train_losses(tmp_path, tiny_model, "budget", packing=True, pack_tokens=256)
    assert len(losses) == 8 and losses[5] < losses[0]


def test_liger_required_on_the_cpu_is_a_clear_failure(tiny_model: Path) -> None:
    from gapforge_runtime.data.packing import apply_liger
    from gapforge_runtime.errors import RuntimeFailure

    assert apply_liger("auto", tiny_model, "cpu") is None
    assert apply_liger(False, tiny_model, "cuda") is None
    with pytest.raises(RuntimeFailure, match=r"train\.liger is true.*CPU.*'auto'"):
        apply_liger(True, tiny_model, "cpu")


def test_the_memory_plan_of_a_token_budget_is_one_row_of_that_many_tokens(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapforge_runtime import memplan
    from gapforge_runtime.config import load_recipe_settings

    monkeypatch.setattr(memplan, "gpu_memory_bytes", lambda: 80 * memplan.GiB)  # as on an 80 GB GPU
    counted = load_recipe_settings(str(write_recipe(tmp_path / "a", batch_size=4)))
    budget = load_recipe_settings(str(write_recipe(tmp_path / "b", batch_size=4, pack_tokens=4096)))
    by_count, by_budget = (
        memplan.plan_for_run(tiny_model, counted),
        memplan.plan_for_run(tiny_model, budget),
    )
    assert by_count is not None and by_budget is not None
    model = memplan.ModelShape.from_config(memplan.read_config(tiny_model))
    assert (
        by_count.activations
        == memplan.estimate(model, memplan.TrainingShape("lora", 4, 96, 8)).activations
    )
    assert (
        by_budget.activations
        == memplan.estimate(model, memplan.TrainingShape("lora", 1, 4096, 8)).activations
    )



def test_the_memory_plan_counts_one_chunk_of_logits_where_liger_fuses_the_loss(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planner asks the same question as apply_liger; with train.liger false it never fuses."""
    from gapforge_runtime import memplan
    from gapforge_runtime.config import load_recipe_settings
    from gapforge_runtime.data import packing

    monkeypatch.setattr(memplan, "gpu_memory_bytes", lambda: 80 * memplan.GiB)
    auto = load_recipe_settings(str(write_recipe(tmp_path / "a", pack_tokens=4096)))
    off = load_recipe_settings(str(write_recipe(tmp_path / "b", pack_tokens=4096, liger=False)))
    assert packing.liger_blocker(tiny_model, "cpu") is not None
    monkeypatch.setattr(packing, "liger_blocker", lambda model_dir, device: "no Triton")
    whole = memplan.plan_for_run(tiny_model, auto)
    monkeypatch.setattr(packing, "liger_blocker", lambda model_dir, device: None)  # CUDA + Liger
    fused, unfused = memplan.plan_for_run(tiny_model, auto), memplan.plan_for_run(tiny_model, off)
    assert whole is not None and fused is not None and unfused is not None
    assert fused.logits < whole.logits == unfused.logits
    assert fused.allocated == whole.allocated - (whole.logits - fused.logits)

def test_a_packed_training_with_another_attention_follows_the_padded_curve_too(
    tmp_path: Path, tiny_model: Path
) -> None:
    """train.packed_attention switches the loaded model's attention (here eager, on the CPU)."""
    require_module("torch")
    padded = train_losses(tmp_path, tiny_model, "padded", packing=False)
    eager = train_losses(tmp_path, tiny_model, "eager", packing=True, packed_attention="eager")
    for a, b in zip(padded, eager, strict=True):
        assert abs(a - b) <= 2e-3 * abs(a), (padded, eager)


def test_triton_kernels_need_a_c_compiler_and_auto_steps_aside_without_one(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gapforge_runtime.data.packing import apply_liger, packed_attention, triton_compiler
    from gapforge_runtime.errors import RuntimeFailure

    assert packed_attention("auto", "cpu") is None and packed_attention("sdpa", "cuda") == "sdpa"
    with pytest.raises(RuntimeFailure, match=r"packed_attention is 'flex_attention'.*CPU"):
        packed_attention("flex_attention", "cpu")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("GAPFORGE_TRITON_LAUNCHER", raising=False)  # no pre-built launcher either
    monkeypatch.setenv("PATH", str(tiny_model))  # a folder without gcc or clang
    assert triton_compiler() is None
    assert packed_attention("auto", "cuda") is None  # SDPA with the block-diagonal mask instead
    assert apply_liger("auto", tiny_model, "cuda") is None
    with pytest.raises(RuntimeFailure, match=r"train\.liger is true.*no C compiler"):
        apply_liger(True, tiny_model, "cuda")


def test_the_leak_check_passes_the_masked_model_and_refuses_one_that_lets_examples_mix(
    tiny_model: Path, encoded: list[Any]
) -> None:
    from gapforge_runtime.data.packing import check_packing, packing_leak
    from gapforge_runtime.errors import RuntimeFailure

    model = load_model(tiny_model, "sdpa")
    model.config.use_cache = False  # as packed training sets it
    leak = check_packing(model, encoded, exact=True)
    assert leak is not None and leak < 1e-5
    assert packing_leak(model, encoded[:1]) is None  # one example: nothing to check
    model.config.use_cache = True  # with a KV cache transformers builds no per-example mask
    assert (packing_leak(model, encoded) or 0.0) > 0.1
    with pytest.raises(
        RuntimeFailure, match=r"train\.packing is true.*llama.*see each other.*packing: false"
    ):
        check_packing(model, encoded, exact=True)


def test_qlora_frozen_weights_go_back_to_bf16_and_the_adapter_stays_float32(tiny_model: Path) -> None:
    """What prepare_model_for_kbit_training upcasts (embeddings, head, norms) returns to bf16."""
    require_module("torch")
    import torch
    from gapforge_runtime.methods.sft import frozen_back_to_bf16
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    for param in model.parameters():  # what the preparation does to every non-4-bit weight
        param.requires_grad = False
        param.data = param.data.float()
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapter = {n for n, p in model.named_parameters() if p.requires_grad}
    moved = frozen_back_to_bf16(model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert adapter and moved == len(dtypes) - len(adapter)
    assert all(dtypes[n] == torch.float32 for n in adapter)
    assert {d for n, d in dtypes.items() if n not in adapter} == {torch.bfloat16}
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in adapter)
