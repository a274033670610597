"""Hyper-parameter sweeps: Optuna trials over the recipe's `sweep.space`, each in its own process.

The study lives in a journal file in the output folder (`OUT/sweep/journal.log`), so a killed sweep
continues where it stopped: finished trials are kept, a trial whose process died is marked FAIL and
its settings are tried again. Each trial trains the recipe's adapter with its settings in a child
process (`python -m gapforge_runtime.launch.trial SPEC.json`), which reports every validation loss to the
study and stops when the median pruner says so; the process exits, so its memory (GPU included) is
returned before the next trial starts. The best trial's adapter is then merged, quantized and
evaluated like a normal run's.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from gapforge_runtime.config import RecipeSettings, load_recipe_settings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import atomic_dir, describe_path, sha256_file, write_json_atomic
from gapforge_runtime.launch.study import (
    STUDY,
    SWEEP_DIR,
    SweepLayout,
    apply_settings,
    check_space,
    open_study,
    recover_dead_trials,
    space_digest,
    suggest,
    sweep_lock,
)
from gapforge_runtime.recipe_sweep import SweepSpec

MAX_FAILURES_IN_A_ROW = 3
"""A sweep whose trials keep failing stops instead of burning the GPUs on the same error."""


# --- the trials' processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the trial's process, before exec: be killed when the sweep's process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(_gpu_count())]


@dataclass
class Running:
    """A trial whose process is running."""

    number: int
    trial_id: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started: float
    gpu: str | None


def _short(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
        for k, v in sorted(params.items())
    )


def _launch(
    study: Any, layout: SweepLayout, recipe: RecipeSettings, model_dir: Path, data_dir: Path,
    gpu: str | None,
) -> Running:  # fmt: skip
    assert recipe.sweep is not None
    trial = study.ask()
    params = suggest(trial, recipe.sweep.space)
    folder = layout.trial_dir(trial.number)
    if folder.exists():  # a retried number never repeats, but a half-made folder may be there
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    trial_recipe = folder / "recipe.json"
    write_json_atomic(trial_recipe, apply_settings(recipe.document(), params))
    spec = {
        "recipe": str(trial_recipe), "model_dir": str(model_dir), "data_dir": str(data_dir),
        "trial_dir": str(folder), "journal": str(layout.journal), "trial_id": trial._trial_id,
        "trial_number": trial.number,
    }  # fmt: skip
    write_json_atomic(folder / "spec.json", spec)
    study._storage.set_trial_user_attr(
        trial._trial_id, "folder", str(folder.relative_to(layout.root))
    )
    env = {**os.environ}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = (folder / "trial.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gapforge_runtime.launch.trial", str(folder / "spec.json")],
        stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent,
    )  # fmt: skip
    where = f" on GPU {gpu}" if gpu is not None else ""
    print(f"[sweep] trial {trial.number} started{where}: {_short(params)}", flush=True)
    return Running(trial.number, trial._trial_id, process, log, time.monotonic(), gpu)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def _tail(path: Path, lines: int = 12) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]


def _reap(study: Any, run: Running, layout: SweepLayout) -> bool:
    """Record how a trial's process ended; True when the trial finished (complete or pruned)."""
    from optuna.trial import TrialState

    code = run.process.wait()
    run.log.close()
    seconds = round(time.monotonic() - run.started, 1)
    storage = study._storage
    frozen = storage.get_trial(run.trial_id)
    if frozen.state == TrialState.RUNNING:  # the process died before telling the study
        reason = f"its process exited with status {code}"
        storage.set_trial_user_attr(run.trial_id, "failure", reason)
        study.tell(run.number, state=TrialState.FAIL)
        log = layout.trial_dir(run.number) / "trial.log"
        print(
            f"[sweep] trial {run.number} FAILED ({reason}, {seconds}s); the end of {log}:",
            flush=True,
        )
        for line in _tail(log):
            print(f"[sweep]   {line}", flush=True)
        return False
    if frozen.state == TrialState.PRUNED:
        step = frozen.last_step
        print(f"[sweep] trial {run.number} pruned at step {step} ({seconds}s)", flush=True)
        return True
    best = study.best_value
    print(f"[sweep] trial {run.number} done: eval loss {frozen.value:.4f} ({seconds}s; best so far {best:.4f})", flush=True)  # fmt: skip
    return bool(frozen.state == TrialState.COMPLETE)


def run_trials(
    recipe: RecipeSettings, out_root: Path, model_dir: Path, trials: int, parallel: int
) -> Any:
    """Run trials until `trials` have finished (complete or pruned); return the study."""
    assert recipe.sweep is not None
    layout = SweepLayout(out_root / SWEEP_DIR)
    study = open_study(layout, recipe.sweep)
    digest = space_digest(recipe.sweep)
    recorded = study.user_attrs.get("space_sha256")
    if recorded is None:
        study.set_user_attr("space_sha256", digest)
    elif recorded != digest:
        raise RuntimeFailure(
            f"{layout.journal}: this study was run with another search space, metric or seed than "
            f"recipe {recipe.path}'s sweep section. Give the new sweep another --out folder, or pass "
            "--force to start the sweep over."
        )
    retried = recover_dead_trials(study)
    if retried:
        print(f"[sweep] trials {retried} were cut off by a killed sweep: marked FAIL, run again", flush=True)  # fmt: skip
    done = _finished(study)
    if done:
        print(f"[sweep] resuming: {done} of {trials} trials already finished", flush=True)
    gpus = _gpu_ids()
    running: list[Running] = []
    failures = 0
    slot = 0
    try:
        while _finished(study) + len(running) < trials or running:
            while len(running) < parallel and _finished(study) + len(running) < trials:
                busy = {r.gpu for r in running}
                free = [g for g in gpus if g not in busy] or gpus
                gpu = free[slot % len(free)] if gpus else None
                slot += 1
                running.append(_launch(study, layout, recipe, model_dir, out_root / "data", gpu))
            time.sleep(0.2)
            for run in [r for r in running if r.process.poll() is not None]:
                running.remove(run)
                if _reap(study, run, layout):
                    failures = 0
                else:
                    failures += 1
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise RuntimeFailure(
                    f"the sweep stopped: {failures} trials in a row failed (see trial.log in "
                    f"{layout.root / 'trials'}). Fix the cause (often memory: narrow "
                    "sweep.space or lower sweep.parallel), then run the sweep again: it resumes."
                )
    finally:
        for run in running:  # an error or Ctrl-C here: stop the trials, they are retried on resume
            run.process.kill()
            run.process.wait()
            run.log.close()
    return study


# --- the summary and the best trial ---------------------------------------------------------------


def _seconds(trial: Any) -> float | None:
    """How long a finished trial ran, from the times Optuna recorded."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round(float((trial.datetime_complete - trial.datetime_start).total_seconds()), 1)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial as the report shows it: number, state, settings, eval loss, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        losses = {int(k): float(v) for k, v in t.intermediate_values.items()}
        rows.append({
            "number": t.number, "state": t.state.name, "params": dict(t.params),
            "eval_loss": t.value, "seconds": _seconds(t),
            "intermediate": {str(k): losses[k] for k in sorted(losses)},
            "note": t.user_attrs.get("failure") or (
                f"retry of trial {t.user_attrs['retry_of']}" if "retry_of" in t.user_attrs else ""
            ),
        })  # fmt: skip
    return rows


def write_summary(study: Any, recipe: RecipeSettings, layout: SweepLayout) -> dict[str, Any]:
    """OUT/sweep/sweep.json: the space, every trial, and the best one."""
    assert recipe.sweep is not None
    best = study.best_trial
    summary = {
        "study": STUDY,
        "journal": str(layout.journal.relative_to(layout.root.parent)),
        "metric": recipe.sweep.metric,
        "direction": "minimize",
        "space": recipe.sweep.model_dump(mode="json")["space"],
        "pruning": recipe.sweep.pruning,
        "best": {"number": best.number, "eval_loss": best.value, "params": dict(best.params)},
        "trials": trial_rows(study),
    }
    write_json_atomic(layout.summary, summary)
    return summary


def install_best(ctx: Any, study: Any, layout: SweepLayout) -> RecipeSettings:
    """Put the best trial's adapter where the pipeline's merge step takes it, with its train record.

    The shipped model is exactly the adapter the sweep measured, not a retraining of its settings.
    """
    from gapforge_runtime.outputs import StepRecord, save_record
    from gapforge_runtime.steps.train import training_digest

    best = study.best_trial
    folder = layout.trial_dir(best.number)
    shutil.copyfile(folder / "recipe.json", layout.best_recipe)
    best_recipe = load_recipe_settings(str(layout.best_recipe))
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    with atomic_dir(ctx.out.adapter) as tmp:
        for item in (folder / "adapter").iterdir():
            shutil.copyfile(item, tmp / item.name)
    for name in ("train_log.jsonl", "train_history.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, ctx.out.root / name)
    inputs = {
        "model": ctx.digest("model", ctx.model_dir),
        "train": sha256_file(ctx.out.data / "train.jsonl"),
        "validation": sha256_file(ctx.out.data / "validation.jsonl"),
        "settings": training_digest(best_recipe),
        "sweep_trial": str(best.number),
    }
    details = {**result["train"], "sweep_trial": best.number, "sweep_eval_loss": best.value}
    save_record(ctx.out, StepRecord("train", inputs, {"adapter": describe_path(ctx.out.adapter)},
                                    details, _seconds(best) or 0.0))  # fmt: skip
    print(f"[sweep] best: trial {best.number}, eval loss {best.value:.4f} ({_short(best.params)}); "
          f"its adapter → {ctx.out.adapter}", flush=True)  # fmt: skip
    return best_recipe


def check_recipe(recipe: RecipeSettings) -> SweepSpec:
    """The recipe's sweep section, checked before anything runs."""
    if recipe.sweep is None:
        raise RuntimeFailure(
            f"recipe {recipe.path}: no sweep section. Add `sweep:` with a search space to the recipe "
            "(for example `space: {train.learning_rate: {low: 1e-5, high: 1e-3, log: true}}`), or "
            "run `gapforge-runtime run` to train with the recipe's own settings."
        )
    if recipe.train.method not in ("lora", "qlora"):
        raise RuntimeFailure(
            f"recipe {recipe.path}: train.method {recipe.train.method!r} with a sweep: the sweep's "
            "trials train LoRA or QLoRA adapters on the data as it is. Sweep a lora or qlora recipe, "
            "or run this one with `gapforge-runtime run`."
        )
    check_space(recipe, recipe.sweep)
    return recipe.sweep


def run_sweep(ctx: Any, trials: int | None = None, parallel: int | None = None) -> Any:
    """The sweep's trials, then a context for the best trial whose adapter is in place.

    The caller (the CLI) merges, quantizes and evaluates with the returned context.
    """
    from gapforge_runtime.steps.data import step_data

    recipe: RecipeSettings = ctx.recipe
    sweep = check_recipe(recipe)
    for flag, value in (("--trials", trials), ("--parallel", parallel)):
        if value is not None and value < 1:
            raise RuntimeFailure(f"{flag} {value}: must be 1 or more.")
    layout = SweepLayout(ctx.out.root / SWEEP_DIR)
    if ctx.force and layout.root.exists():
        shutil.rmtree(layout.root)
    with sweep_lock(layout):
        step_data(ctx)
        wanted = trials or sweep.trials
        at_once = parallel or sweep.parallel
        if recipe.train.nproc > 1:
            print(f"[sweep] note: each trial trains in one process on one GPU (train.nproc "
                  f"{recipe.train.nproc} is for `run`); use sweep.parallel to use the GPUs", flush=True)  # fmt: skip
        study = run_trials(recipe, ctx.out.root, ctx.model_dir, wanted, at_once)
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise RuntimeFailure(
                f"{layout.journal}: no trial completed (all pruned or failed), so there is no best "
                "one to ship. Widen sweep.space or turn sweep.pruning off, then run the sweep again."
            )
        write_summary(study, recipe, layout)
        best_recipe = install_best(ctx, study, layout)
    return replace(ctx, recipe=best_recipe, force=False, _digests=dict(ctx._digests))
