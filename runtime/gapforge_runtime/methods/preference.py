"""Preference alignment: DPO through TRL on preference pairs, and how pairs are scored.

The pairs themselves (their forms, checks and views) are in preference_data.py. The rest of the
pipeline sees a pair as its prompt with the chosen answer (test loss, sample answers, the judge,
GPTQ calibration); the evaluation adds preference accuracy: whether a model gives the chosen
answer a higher log-probability than the rejected one, and the implicit DPO reward,
beta * (log pi(y|x) - log ref(y|x)), of the trained model against the starting model.
"""

from __future__ import annotations

from typing import Any

from gapforge_runtime.data.preference import completion_tokens

# --- scoring pairs ------------------------------------------------------------------------------


def completion_logp(model: Any, tokenizer: Any, record: dict[str, Any], which: str, max_length: int) -> float:  # fmt: skip
    """Sum of log p(answer token) under `model`, the answer cut where TRL's keep_start cuts it."""
    import torch

    ids, start = completion_tokens(tokenizer, record, which)
    ids = ids[:max_length]
    if start >= len(ids):
        return 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0].float()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(ids[1:], device=device)
    picked = logps.gather(1, targets[:, None])[:, 0]
    return float(picked[start - 1 :].sum()) if start > 0 else float(picked.sum())


def score_pairs(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], max_length: int
) -> list[tuple[float, float]]:
    """(log p(chosen), log p(rejected)) of every pair under `model`."""
    model.eval()
    return [
        (
            completion_logp(model, tokenizer, r, "chosen", max_length),
            completion_logp(model, tokenizer, r, "rejected", max_length),
        )
        for r in records
    ]


def _accuracy(margins: list[float]) -> float:
    """Share of pairs with the chosen answer above the rejected; a tie counts half."""
    if not margins:
        return float("nan")
    return (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / len(margins)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(
    start: list[tuple[float, float]], trained: list[tuple[float, float]], beta: float
) -> dict[str, Any]:
    """Preference accuracy and margins of the starting and the trained model, and the implicit
    DPO reward of the trained model against the starting one (the reference).

    Before training the policy is the reference: every reward margin is 0, accuracy 0.5 (chance).
    """
    start_margins = [c - r for c, r in start]
    trained_margins = [c - r for c, r in trained]
    rewards = [beta * (t - s) for t, s in zip(trained_margins, start_margins, strict=True)]
    return {
        "pairs": len(start),
        "beta": beta,
        "logp_accuracy": {"start": _accuracy(start_margins), "trained": _accuracy(trained_margins)},
        "logp_margin": {"start": _mean(start_margins), "trained": _mean(trained_margins)},
        "reward_accuracy": {"start": 0.5 if rewards else float("nan"), "trained": _accuracy(rewards)},
        "reward_margin": {"start": 0.0 if rewards else float("nan"), "trained": _mean(rewards)},
    }  # fmt: skip


# --- training -----------------------------------------------------------------------------------


def dpo_arguments(recipe: Any) -> dict[str, Any]:
    """DPOConfig's own settings from `train.dpo`, on top of the shared TrainingArguments."""
    dpo = recipe.train.dpo
    return {
        "beta": dpo.beta,
        "loss_type": [dpo.loss_type],
        "label_smoothing": dpo.label_smoothing,
        "max_length": recipe.train.max_seq_length,
        "truncation_mode": "keep_start",
    }


def dpo_trainer(
    model: Any,
    args: Any,
    tokenizer: Any,
    train_records: list[dict[str, Any]],
    validation_records: list[dict[str, Any]],
    callbacks: list[Any],
) -> Any:
    """TRL's DPOTrainer on a LoRA-wrapped model: the reference is the model with the fresh adapter
    (B = 0, so the starting model), kept by TRL as a frozen copy of the adapter."""
    from datasets import Dataset
    from trl import DPOTrainer

    return DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_records),
        eval_dataset=Dataset.from_list(validation_records),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
