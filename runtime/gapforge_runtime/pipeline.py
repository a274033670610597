"""The steps of a run, in order: data → train → merge → quantize → eval → report.

Each step (steps/) is a function of one `RunContext`; it checks its inputs, is skipped when its
recorded inputs are unchanged, and writes its outputs atomically. The report (report/manifest.py)
is rewritten after any step.
"""

from __future__ import annotations

from collections.abc import Callable

from gapforge_runtime.outputs import StepRecord
from gapforge_runtime.steps.context import RunContext
from gapforge_runtime.steps.data import step_data
from gapforge_runtime.steps.evaluate import step_eval
from gapforge_runtime.steps.merge import step_merge
from gapforge_runtime.steps.quantize import step_quantize
from gapforge_runtime.steps.train import step_train

Step = Callable[[RunContext], StepRecord]

STEPS: dict[str, tuple[Step, ...]] = {
    "data": (step_data,),
    "train": (step_train,),
    "merge": (step_merge,),
    "quantize": (step_quantize,),
    "eval": (step_eval,),
    # train runs (or confirms) the data step itself.
    "run": (step_train, step_merge, step_quantize, step_eval),
}
AFTER_TRAINING: tuple[Step, ...] = (step_merge, step_quantize, step_eval)
"""A sweep's best trial has its adapter: the rest of the run."""


def steps_for(command: str, ctx: RunContext) -> list[Step]:
    """The steps `command` runs on this node, with the recipe's training method in place."""
    steps = list(STEPS[command])
    if ctx.nodes.multi and not ctx.nodes.lead and command in ("run", "train"):
        # Every node trains; node 0 finishes the run (merge, quantize, evaluate, report).
        steps = [step_train]
    if ctx.recipe.train.method == "distill":  # the teacher's answers, then the student's adapter
        from gapforge_runtime.steps.distill import step_train_distilled

        steps = [step_train_distilled if s is step_train else s for s in steps]
    return steps
