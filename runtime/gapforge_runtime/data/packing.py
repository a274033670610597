"""Padding-free batches for SFT: examples laid end to end in one row, kept apart by their position ids.

A packed batch is one row of shape (1, T): the examples' tokens one after another, `position_ids`
restarting at 0 at every example, and no attention mask. transformers (5.x, `masking_utils`) sees the
restarts (`find_packed_sequence_indices`) and builds a block-diagonal causal mask for SDPA, eager and
flex attention, so no token attends to another example. It does so only without a KV cache
(`use_cache=False`, which packed training sets). The label of each example's first token is
-100: in a row it would be predicted from the previous example's last token, which the unpacked batch
never does (its first label falls off in the shift). The loss is then the same token mean over the
same predicted tokens as the padded batch, and Trainer's `num_items_in_batch` counts the same tokens.

Two ways to form a batch:
- `train.packing: true` (the default) flattens the batch Trainer samples (`batch_size` examples):
  the same examples per step as padding, same loss, none of the compute spent on padding;
- `train.pack_tokens: N` forms batches by a token budget instead: as many whole examples, in a seeded
  order, as fit in N tokens per forward pass (a step holds more examples where they are short).

Liger kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE) are applied where the architecture
has them, on CUDA only (`train.liger`).
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gapforge_runtime.data.encoding import IGNORE_INDEX, Encoded
from gapforge_runtime.errors import RuntimeFailure


def flatten_examples(examples: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
    """One padding-free row from examples ({'input_ids', 'labels'}): ids, labels with -100 at each
    example's first token, position ids restarting per example. No attention mask (the model builds
    the block-diagonal one from the position ids)."""
    import torch

    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        length = len(example["input_ids"])
        if length == 0:
            continue
        ids.extend(example["input_ids"])
        labels.append(IGNORE_INDEX)  # never predicted from the previous example's last token
        labels.extend(example["labels"][1:])
        positions.extend(range(length))
    return {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
    }


def flatten_batch(features: list[dict[str, Any]]) -> dict[str, Any]:
    """The data collator of packed training: Trainer's features are examples, or (with a token
    budget) groups of examples under 'examples'; either way they become one flattened row."""
    examples: list[dict[str, list[int]]] = []
    for feature in features:
        examples.extend(feature.get("examples", [feature]))
    return flatten_examples(examples)


def token_budget_groups(lengths: Sequence[int], budget: int, seed: int) -> list[list[int]]:
    """Indices of examples grouped so that each group's lengths sum to at most `budget`.

    The examples are taken in a seeded random order and filled greedily, in that order, into the
    current group (a new group starts when the next one does not fit); an example longer than the
    budget (impossible when budget >= max_seq_length) gets a group of its own."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index in order:
        if current and used + lengths[index] > budget:
            groups.append(current)
            current, used = [], 0
        current.append(index)
        used += lengths[index]
    if current:
        groups.append(current)
    return groups


class PackedDataset:
    """A map-style dataset whose items are groups of examples fitting a token budget."""

    def __init__(self, items: list[Encoded], budget: int, seed: int) -> None:
        groups = token_budget_groups([len(i.input_ids) for i in items], budget, seed)
        self.groups = [[items[i] for i in group] for group in groups]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, list[dict[str, list[int]]]]:
        return {
            "examples": [{"input_ids": e.input_ids, "labels": e.labels} for e in self.groups[index]]
        }


def packing_leak(model: Any, examples: Sequence[Any], limit: int = 64) -> float | None:
    """How much packing changes what the model computes: the relative L2 difference between the
    logits of an example run alone and the same example packed after another (two training examples,
    at most `limit` tokens each, no gradients, eval mode). About 1e-7 in fp32 and a few 1e-2 in bf16
    where the per-example mask holds; near 1 where the model lets examples see each other (an
    architecture or attention that ignores restarting position ids, or a KV cache in use).
    None when fewer than two examples of two tokens exist."""
    import torch

    usable = [e.input_ids[:limit] for e in examples if len(e.input_ids) >= 2][:2]
    if len(usable) < 2:
        return None
    first, second = usable
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor([first + second], device=device)
            positions = torch.tensor(
                [list(range(len(first))) + list(range(len(second)))], device=device
            )
            packed = model(input_ids=ids, position_ids=positions).logits[0, len(first) :].float()
            alone = model(input_ids=torch.tensor([second], device=device)).logits[0].float()
    finally:
        model.train(was_training)
    return float((packed - alone).norm() / alone.norm().clamp_min(1e-12))


def check_packing(model: Any, examples: Sequence[Any], exact: bool) -> float | None:
    """Refuse to train on packed batches that would leak between examples (RuntimeFailure); returns
    the measured difference. `exact`: fp32 weights (tolerance 1e-3), else bf16/fp16 (0.1)."""
    leak = packing_leak(model, examples)
    tolerance = 1e-3 if exact else 0.1
    if leak is not None and leak > tolerance:
        kind = getattr(getattr(model, "config", None), "model_type", "this model")
        attention = getattr(getattr(model, "config", None), "_attn_implementation", "?")
        raise RuntimeFailure(
            f"recipe: train.packing is true, but with {kind} ({attention} attention) an example packed "
            f"after another computes different logits than alone (relative difference {leak:.3g}, "
            f"more than {tolerance:g}): the examples would see each other. Set train.packing: false "
            "(padded batches), or train.packed_attention to 'sdpa' or 'eager'."
        )
    return leak


LIGER_ARCHITECTURES = (
    "llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3_text", "qwen2", "qwen3", "qwen3_moe",
    "phi3", "granite", "olmo2", "glm4",
)  # fmt: skip
"""model_type values with an `apply_liger_kernel_to_<model_type>` in liger-kernel 0.8."""


def _model_type(model_dir: Path) -> str:
    try:
        return str(
            json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["model_type"]
        )
    except (OSError, ValueError, KeyError):
        return ""


def triton_compiler() -> str | None:
    """How Triton builds its kernel launcher at first use: the module pre-built in the image
    (`$GAPFORGE_TRITON_LAUNCHER`), or a C compiler ($CC, gcc or clang); None: Triton's kernels
    (Liger, flex attention) cannot run."""
    from gapforge_runtime.triton_launcher import how_triton_builds

    return how_triton_builds()


def packed_attention(setting: str, device: str) -> str | None:
    """The attention implementation of packed training: flex attention (a block mask that skips other
    examples' blocks; measured 2x SDPA's dense block-diagonal mask on an H200) on CUDA where Triton
    can compile it, else None (the model's default, SDPA, with the block-diagonal mask)."""
    if setting in ("sdpa", "eager"):
        return setting
    flex = setting == "flex_attention"
    if device != "cuda" or (setting == "auto" and triton_compiler() is None):
        if flex:
            raise RuntimeFailure(
                "recipe: train.packed_attention is 'flex_attention', but "
                + (
                    "training runs on the CPU"
                    if device != "cuda"
                    else "Triton has no pre-built launcher and finds no C compiler"
                )
                + " (flex attention's backward needs a CUDA GPU and Triton). Set it to 'auto' or 'sdpa'."
            )
        return None
    return "flex_attention"


def liger_blocker(model_dir: Path, device: str) -> str | None:
    """Why Liger kernels cannot run for this model here, or None where they can (the memory planner
    asks before training; apply_liger before loading)."""
    model_type = _model_type(model_dir)
    if device != "cuda":
        return "Liger kernels are Triton GPU kernels and the training runs on the CPU"
    if triton_compiler() is None:
        return (
            "Triton has no pre-built launcher ($GAPFORGE_TRITON_LAUNCHER) and finds no C "
            "compiler to build one with ($CC, gcc, clang)"
        )
    if model_type not in LIGER_ARCHITECTURES:
        return f"liger-kernel has no kernels for the architecture '{model_type or 'unknown'}'"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed in this image (it is in the 'cuda' profile)"
    return None


def apply_liger(setting: bool | str, model_dir: Path, device: str) -> str | None:
    """Patch the model's architecture with Liger kernels before the model is loaded.

    `auto` applies them where they can run (CUDA, liger-kernel installed, the architecture covered)
    and says why not otherwise; `true` requires them (a clear failure when they cannot run); `false`
    never. Returns what was applied (for the log), or None."""
    if setting is False or setting == "false":
        return None
    required = setting is True or setting == "true"
    model_type = _model_type(model_dir)
    reason = liger_blocker(model_dir, device)
    patch = None
    if reason is None:
        try:
            import liger_kernel.transformers as liger  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            reason = "liger-kernel is not installed in this image (it is in the 'cuda' profile)"
        else:
            patch = getattr(liger, f"apply_liger_kernel_to_{model_type}", None)
            if patch is None:
                reason = f"this liger-kernel has no apply_liger_kernel_to_{model_type}"
    if reason is not None or patch is None:
        if required:
            raise RuntimeFailure(
                f"recipe: train.liger is true, but {reason}. Set train.liger to 'auto' (Liger where it "
                "can run) or false, or train on a GPU of the 'cuda' profile."
            )
        return None
    import inspect

    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
              "fused_linear_cross_entropy": True}  # fmt: skip
    accepted = inspect.signature(patch).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    patch(**kwargs)
    applied = ", ".join(k for k, v in kwargs.items() if v)
    return f"liger-kernel {applied} ({model_type})"
