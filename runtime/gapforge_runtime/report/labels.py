"""Human labels and number formats for the report: a reviewer reads "GGUF Q4_K_M" and "test loss",
never a JSON key such as `gguf:q4_k_m` or `test_dropped_no_target`, and never `None`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

MODEL_LABELS = {
    "base": "Base",
    "merged": "Merged",
    "gguf:f16": "GGUF F16",
    "gguf:q8_0": "GGUF Q8_0",
    "gguf:q4_k_m": "GGUF Q4_K_M",
    "gptq:int4": "GPTQ int4",
    "bnb:nf4": "bitsandbytes NF4",
    "bnb:int8": "bitsandbytes int8",
}

GPU_FIELDS = ("peak_gpu_memory_bytes", "model_tflops_per_second", "mfu_pct", "gpu_hours")
"""Training figures that only a CUDA run measures: a CPU run's report leaves them out."""


def model_label(name: str) -> str:
    """The reader's name of a model or artefact key."""
    if name in MODEL_LABELS:
        return MODEL_LABELS[name]
    kind, _, variant = name.partition(":")
    return f"{kind.upper()} {variant.upper()}" if variant else name


def model_order(names: Iterable[str], sizes: Mapping[str, float]) -> list[str]:
    """Pipeline order: base, merged, then each artefact largest first (JSON keeps keys sorted by
    name, which puts the quantized files between the two models they are compared with)."""
    names = list(names)
    first = [n for n in ("base", "merged") if n in names]
    rest = [n for n in names if n not in first]
    rest.sort(key=lambda n: (-float(sizes.get(n) or 0), n))
    return first + rest


def finite(value: Any) -> bool:
    """A number that can be printed as one (not None, not NaN, not infinite, not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def size_text(size_bytes: float) -> str:
    """Bytes as MB or GB (decimal, as file managers show them)."""
    if size_bytes >= 1e9:
        return f"{size_bytes / 1e9:.2f} GB"
    if size_bytes >= 1e6:
        return f"{size_bytes / 1e6:.1f} MB"
    return f"{size_bytes / 1e3:.1f} kB" if size_bytes >= 1e3 else f"{size_bytes:.0f} bytes"


def signed_pct(value: float) -> str:
    """A relative change, signed: +1.23%."""
    return f"{value:+.2f}%"


def seconds_text(value: float) -> str:
    """A duration: seconds below ten minutes, else minutes."""
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


def plain(value: Any) -> str:
    """Any other value: yes/no for booleans, 4 significant decimals for floats."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def humanized(key: str) -> str:
    """A key no table below names: its words, never its underscores."""
    return key.replace("_", " ").replace(":", " ")


SPLITS = ("train", "validation", "test")

DATA_LABELS = {
    "format": "data format",
    "examples_read": "examples read",
    "duplicates_removed": "exact duplicates removed",
    "split": "split (train/validation/test)",
    "seed": "shuffle seed",
    "replay_examples": "examples replayed from the parent's training split",
    "replay_ratio": "replay ratio",
}

TRAINING_LABELS: dict[str, tuple[str, Any]] = {
    "device": ("device", str),
    "world_size": ("processes", plain),
    "global_step": ("optimizer steps", plain),
    "resumed_from_step": ("resumed from step", plain),
    "stopped_early": ("stopped early", plain),
    "best_eval_loss": ("best validation loss", lambda v: f"{v:.4f}"),
    "train_seconds": ("training time", seconds_text),
    "tokens_seen": ("tokens seen", plain),
    "tokens_per_second": ("tokens per second", lambda v: f"{v:,.1f}"),
    "peak_gpu_memory_bytes": ("peak GPU memory", lambda v: f"{v / 2**30:.2f} GiB"),
    "model_tflops_per_second": ("model TFLOP/s", lambda v: f"{v:.2f}"),
    "mfu_pct": ("model FLOP utilization", lambda v: f"{v:.1f}%"),
    "gpu_hours": ("GPU hours", lambda v: f"{v:.3f}"),
    "sweep_trial": ("sweep trial shipped", plain),
    "sweep_eval_loss": ("that trial's validation loss", lambda v: f"{v:.4f}"),
}


def shown(value: Any) -> bool:
    """A value worth a row: not None, not a NaN, not an empty string."""
    if value is None or value == "":
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _in_table_order(values: Mapping[str, Any], table: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The labelled keys in the label table's reading order, then any other key (JSON sorts them)."""
    known = [(k, values[k]) for k in table if k in values]
    return known + [(k, v) for k, v in values.items() if k not in table]


def data_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """The data step's scalar figures, labelled (the per-split counts go to `split_rows`)."""
    per_split = {f"{s}_{k}" for s in SPLITS for k in ("examples", "tokens", "truncated")}
    per_split |= {f"{s}_dropped_no_target" for s in SPLITS}
    rows = []
    for key, value in _in_table_order(data, DATA_LABELS):
        if key in per_split or isinstance(value, dict | list) or not shown(value):
            continue
        rows.append([DATA_LABELS.get(key, humanized(key)), plain(value)])
    return rows


def split_rows(data: Mapping[str, Any]) -> list[list[str]]:
    """One row per split: examples, tokens, examples cut at max_seq_length, examples dropped."""
    rows = []
    for split in SPLITS:
        if not shown(data.get(f"{split}_examples")):
            continue
        cells = [data.get(f"{split}_{k}") for k in ("examples", "tokens", "truncated")]
        cells.append(data.get(f"{split}_dropped_no_target"))
        rows.append([split, *("" if not shown(c) else plain(c) for c in cells)])
    return rows


def training_rows(training: Mapping[str, Any]) -> list[list[str]]:
    """What training did, labelled; GPU figures only on a CUDA run, and no empty value."""
    on_gpu = str(training.get("device", "")).startswith("cuda")
    rows = []
    for key, value in _in_table_order(training, TRAINING_LABELS):
        if isinstance(value, dict | list) or not shown(value):
            continue
        if key in GPU_FIELDS and not on_gpu:
            continue
        label, fmt = TRAINING_LABELS.get(key, (humanized(key), plain))
        rows.append([label, fmt(value)])
    return rows
