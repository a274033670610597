"""The sweep's Optuna study: its search space, the journal it lives in, and the lock one sweep holds.

A killed sweep continues from the journal (`OUT/sweep/journal.log`): finished trials are kept, and
a trial whose process died is marked FAIL so its settings are tried again.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.recipe_problems import schema_problems
from gapforge_runtime.recipe_schema import Recipe
from gapforge_runtime.recipe_sweep import INTEGER_SETTINGS, SweepRange, SweepSpec

STUDY = "gapforge-sweep"
SWEEP_DIR = "sweep"
JOURNAL = "journal.log"
SUMMARY = "sweep.json"
BEST_RECIPE = "best-recipe.json"


@dataclass(frozen=True)
class SweepLayout:
    """Where a sweep keeps its study and its trials inside the output folder."""

    root: Path

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def best_recipe(self) -> Path:
        return self.root / BEST_RECIPE

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"trial-{number:04d}"


def apply_settings(document: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The recipe JSON with a trial's settings in place (`train.epochs` replaces `max_steps` and back)."""
    recipe = copy.deepcopy(document)
    for name, value in params.items():
        section, key = name.split(".", 1)
        if name in INTEGER_SETTINGS and isinstance(value, float) and value.is_integer():
            value = int(value)
        recipe[section][key] = value
        if name == "train.epochs":
            recipe["train"]["max_steps"] = None
        elif name == "train.max_steps":
            recipe["train"]["epochs"] = None
    return recipe


def _candidates(name: str, spec: SweepRange) -> list[Any]:
    if spec.choices is not None:
        return list(spec.choices)
    return [spec.low, spec.high]


def check_space(recipe: RecipeSettings, sweep: SweepSpec) -> None:
    """Every end of every range and every choice makes a valid recipe; else one error listing them."""
    problems: list[str] = []
    for name, spec in sweep.space.items():
        where = f"sweep.space.{name}"
        if name == "train.scheduler" and spec.choices is None:
            problems.append(
                f"{where}: the scheduler takes choices, not a range: give choices: [...]"
            )
            continue
        if name in INTEGER_SETTINGS and spec.choices is None:
            ends = (spec.low, spec.high)
            if any(v is not None and not float(v).is_integer() for v in ends):
                problems.append(f"{where}: an integer setting needs whole low/high (got {ends})")
                continue
        for value in _candidates(name, spec):
            try:
                Recipe.model_validate(apply_settings(recipe.document(), {name: value}))
            except ValidationError as exc:  # worded as the schema words it
                detail = "; ".join(p.text for p in schema_problems(exc))
                problems.append(f"{where}: the value {value!r} makes an invalid recipe ({detail})")
    if problems:
        raise RuntimeFailure(
            f"recipe {recipe.path}: the sweep's search space has values the recipe cannot take. "
            "Narrow the ranges or fix the choices in sweep.space, then build or run again.",
            problems,
        )


def space_digest(sweep: SweepSpec) -> str:
    """What must not change under a resumed study: the space, the metric and the sampler's seed."""
    fixed = {
        "space": sweep.model_dump(mode="json")["space"],
        "metric": sweep.metric,
        "seed": sweep.seed,
    }
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def suggest(trial: Any, space: Mapping[Any, SweepRange]) -> dict[str, Any]:
    """The trial's settings, drawn by the study's sampler (or taken from an enqueued retry)."""
    params: dict[str, Any] = {}
    for name in sorted(space):
        spec = space[name]
        if spec.choices is not None:
            params[name] = trial.suggest_categorical(name, spec.choices)
        elif name in INTEGER_SETTINGS:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return params


def study_pruner(sweep: SweepSpec) -> Any:
    import optuna

    if not sweep.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=sweep.prune_startup_trials, n_warmup_steps=sweep.prune_warmup_steps
    )


def journal_storage(journal: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(journal)))


def open_study(layout: SweepLayout, sweep: SweepSpec) -> Any:
    """The study in the journal file, created on the first call and loaded on the next ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    layout.root.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=STUDY,
        storage=journal_storage(layout.journal),
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=sweep.seed),
        pruner=study_pruner(sweep),
        load_if_exists=True,
    )
    # A resumed sweep must not draw the first run's random settings again: its sampler's seed moves
    # on by the trials already in the study (still repeatable: the same history, the same draws).
    study.sampler = optuna.samplers.TPESampler(
        seed=sweep.seed + len(study.get_trials(deepcopy=False))
    )
    return study


def recover_dead_trials(study: Any) -> list[int]:
    """Trials left RUNNING by a killed sweep: marked FAIL, and their settings queued to run again.

    Only the process holding the sweep's lock runs trials, so any RUNNING trial found on taking it
    belongs to a process that is gone (Optuna's heartbeat is not offered by journal storage).
    """
    from optuna.trial import TrialState

    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage = study._storage
        storage.set_trial_user_attr(trial._trial_id, "failure", "its process died (sweep killed)")
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        retried.append(trial.number)
    return retried


@contextlib.contextmanager
def sweep_lock(layout: SweepLayout) -> Iterator[None]:
    """One sweep at a time on an output folder (released by the kernel if the process dies)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with (layout.root / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeFailure(
                f"{layout.root}: another sweep is running on this output folder. Wait for it to "
                "finish (or stop it), or give this one another --out folder."
            ) from None
        yield
