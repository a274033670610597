"""The recipe's `sweep:` section: the settings a hyper-parameter sweep may search, and how.

Its models are the recipe schema's (recipe_schema.Recipe holds a SweepSpec) and share its base,
`Strict`, defined here because the schema imports this module.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Every recipe model: unknown fields refused, frozen once validated."""

    # Attribute docstrings become the fields' descriptions in recipes/schema.json (editor hovers).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


SweptSetting = Literal[
    "train.learning_rate", "lora.r", "lora.alpha", "lora.dropout", "train.max_steps", "train.epochs",
    "train.warmup_steps", "train.batch_size", "train.gradient_accumulation", "train.scheduler",
]  # fmt: skip
INTEGER_SETTINGS = frozenset({"lora.r", "train.max_steps", "train.warmup_steps", "train.batch_size",
                              "train.gradient_accumulation"})  # fmt: skip


class SweepRange(Strict):
    """One searched setting: a range (`low` to `high`; `log: true` for log-uniform) or `choices`."""

    low: float | None = None
    """The range's lower end (integers for integer settings such as lora.r)."""
    high: float | None = None
    """The range's upper end, included."""
    log: bool = False
    """Sample the range log-uniformly (learning rates)."""
    choices: Annotated[list[int | float | str] | None, Field(min_length=1)] = None
    """A list of values to pick from, instead of a range."""

    @model_validator(mode="after")
    def _range_or_choices(self) -> SweepRange:
        has_range = self.low is not None or self.high is not None
        if has_range == (self.choices is not None):
            raise ValueError(
                "give either low and high (a range) or choices (a list), not both or neither"
            )
        if has_range:
            if self.low is None or self.high is None or self.low >= self.high:
                raise ValueError(f"a range needs low < high (got low {self.low}, high {self.high})")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class SweepSpec(Strict):
    """A hyper-parameter sweep (`gapforge-runtime sweep`): Optuna trials, each in its own process."""

    space: Annotated[dict[SweptSetting, SweepRange], Field(min_length=1)]
    """The searched settings by dotted name, such as `train.learning_rate: {low: 1e-5, high: 1e-3, log: true}`."""
    trials: Annotated[int, Field(ge=1, le=1000)] = 8
    """Trials that finish (complete or pruned); failed trials are retried. `--trials` overrides it."""
    parallel: Annotated[int, Field(ge=1, le=64)] = 1
    """Trials run at once, each its own process; with GPUs, each process gets one (round robin)."""
    metric: Literal["eval_loss"] = "eval_loss"
    """What the sweep minimizes: the validation loss of the trial's adapter."""
    seed: int = 0
    """Seeds Optuna's sampler (TPE), for repeatable suggestions."""
    pruning: bool = True
    """Stop a trial early whose validation loss is worse than the median of earlier trials at that step."""
    prune_startup_trials: Annotated[int, Field(ge=0)] = 2
    """Trials that finish before any is pruned."""
    prune_warmup_steps: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps of each trial before it may be pruned."""
