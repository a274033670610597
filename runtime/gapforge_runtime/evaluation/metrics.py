"""Held-out quality: token NLL of the base, merged and GGUF models over the same token ids.

transformers scores the base and merged models; llama-cpp-python (`logits_all=True`) scores each
GGUF. Both see the exact ids of the encoded test split, and the loss is computed here, the same
way for both: mean negative log-likelihood over the trained (assistant) tokens.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gapforge_runtime.data.encoding import IGNORE_INDEX, Encoded


@dataclass
class ModelScore:
    """Loss and perplexity of one model on the test split, with its size and sample answers."""

    name: str
    loss: float
    perplexity: float
    tokens: int
    size_bytes: int


def _log_softmax_nll(logits: Any, targets: list[int]) -> float:
    """Sum of -log p(target) for rows of logits (numpy, float64 for a stable softmax)."""
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
    picked = rows[np.arange(len(targets)), np.asarray(targets)]
    return float((log_z - picked).sum())


def _positions(item: Encoded) -> tuple[list[int], list[int]]:
    """Positions whose logits predict a trained token, and those tokens."""
    pos, tgt = [], []
    for i in range(1, len(item.input_ids)):
        if item.labels[i] != IGNORE_INDEX:
            pos.append(i - 1)
            tgt.append(item.labels[i])
    return pos, tgt


def score_transformers(model: Any, items: list[Encoded]) -> tuple[float, int]:
    """Mean NLL and token count of an HF causal LM over the items."""
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for item in items:
            pos, tgt = _positions(item)
            if not pos:
                continue
            ids = torch.tensor([item.input_ids], device=device)
            logits = model(input_ids=ids).logits[0].float().cpu().numpy()
            total += _log_softmax_nll(logits[pos], tgt)
            count += len(tgt)
    return (total / count if count else float("nan")), count


def greedy_transformers(
    model: Any, prompts: list[list[int]], max_new: int, stop_ids: set[int]
) -> list[list[int]]:
    """Greedy continuations of each prompt (token ids)."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(stop_ids) or None,
                pad_token_id=min(stop_ids) if stop_ids else 0,
            )
            new = out[0][len(prompt) :].tolist()
            outputs.append([t for t in new if t not in stop_ids])
    return outputs


def open_gguf(path: Path, n_ctx: int) -> Any:
    """A llama-cpp-python model that keeps the logits of every position."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        logits_all=True,
        n_threads=os.cpu_count() or 1,
        verbose=False,
        seed=0,
    )


def score_gguf(llm: Any, items: list[Encoded]) -> tuple[float, int]:
    """Mean NLL and token count of a GGUF model over the same token ids."""
    import numpy as np

    total, count = 0.0, 0
    for item in items:
        pos, tgt = _positions(item)
        if not pos:
            continue
        llm.reset()
        llm.eval(item.input_ids)
        logits = np.asarray(llm.scores[: len(item.input_ids)])
        total += _log_softmax_nll(logits[pos], tgt)
        count += len(tgt)
    return (total / count if count else float("nan")), count


def greedy_gguf(
    llm: Any, prompts: list[list[int]], max_new: int, stop_ids: set[int]
) -> list[list[int]]:
    """Greedy continuations from a GGUF model, argmax over its own logits."""
    import numpy as np

    outputs = []
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        new: list[int] = []
        for _ in range(max_new):
            if llm.n_tokens >= llm.n_ctx():
                break
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if token in stop_ids:
                break
            new.append(token)
            llm.eval([token])
        outputs.append(new)
    return outputs


def perplexity(loss: float) -> float:
    """exp(loss), guarded against overflow."""
    return math.exp(loss) if loss < 700 else float("inf")


def delta_pct(value: float, reference: float) -> float:
    """Relative change of `value` over `reference`, in percent."""
    return (value - reference) / reference * 100.0 if reference else float("inf")
