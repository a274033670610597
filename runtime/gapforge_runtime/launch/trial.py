"""One sweep trial in its own process (`python -m gapforge_runtime.launch.trial SPEC.json`): train the
trial's adapter, report each validation loss to the study, stop when the pruner says so.

The process exits after the trial, so its memory (GPU included) is returned before the next one.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from gapforge_runtime.config import load_recipe_settings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import write_json_atomic
from gapforge_runtime.launch.study import STUDY, journal_storage, study_pruner


class TrialPruned(BaseException):
    """Raised by the pruning observer out of Trainer's loop (BaseException: observers' errors are
    caught and logged, this one must stop the training)."""


def run_trial(spec: dict[str, Any]) -> int:
    """Train one trial's adapter, report its validation losses to the study, tell the outcome."""
    import optuna

    from gapforge_runtime.data.encoding import encoded_split
    from gapforge_runtime.evaluation.metrics import score_transformers
    from gapforge_runtime.methods.sft import train_adapter
    from gapforge_runtime.modelio import load_causal_lm, load_tokenizer

    recipe = load_recipe_settings(spec["recipe"])
    assert recipe.sweep is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=STUDY,
        storage=journal_storage(Path(spec["journal"])),
        pruner=study_pruner(recipe.sweep),
    )
    trial = optuna.trial.Trial(study, spec["trial_id"])
    folder = Path(spec["trial_dir"])
    model_dir, data_dir = Path(spec["model_dir"]), Path(spec["data_dir"])
    tokenizer = load_tokenizer(model_dir)
    train_set = encoded_split(recipe, tokenizer, data_dir, "train")
    validation = encoded_split(recipe, tokenizer, data_dir, "validation")

    def report(update: Any) -> None:
        if "eval_loss" not in update.logs:
            return
        trial.report(update.logs["eval_loss"], update.step)
        if trial.should_prune():
            raise TrialPruned(update.step)

    try:
        result = train_adapter(recipe, model_dir, tokenizer, train_set, validation,
                               folder / "checkpoints", folder / "adapter", folder / "train_log.jsonl",
                               resume=False, observers=[report])  # fmt: skip
    except TrialPruned as pruned:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        write_json_atomic(folder / "result.json", {"state": "PRUNED", "step": pruned.args[0]})
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
        print(f"[trial {trial.number}] pruned at step {pruned.args[0]}", flush=True)
        return 0
    shutil.rmtree(
        folder / "checkpoints", ignore_errors=True
    )  # the adapter is kept; disk is not free
    # One definition of the metric for every trial: the token-weighted validation loss of the saved
    # adapter (Trainer's last evaluation may not fall on the last step).
    import gc

    import torch
    from peft import PeftModel

    gc.collect()  # the trained model is gone with train_adapter's frame: return its memory first
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.empty_cache()
    # As the eval step scores: bf16 on the GPU (an 8B model in float32 on CPU would take hours).
    placement = (
        {"dtype": torch.bfloat16, "device_map": {"": 0}} if on_gpu else {"dtype": torch.float32}
    )
    model = PeftModel.from_pretrained(load_causal_lm(model_dir, **placement), folder / "adapter")
    loss, tokens = score_transformers(model, validation)
    details = {k: v for k, v in result.__dict__.items() if k != "log_history"}
    write_json_atomic(folder / "result.json", {"state": "COMPLETE", "eval_loss": loss,
                                               "eval_tokens": tokens, "train": details})  # fmt: skip
    study.tell(trial.number, loss)
    print(f"[trial {trial.number}] validation loss {loss:.4f} over {tokens} tokens", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m gapforge_runtime.launch.trial SPEC.json`: one trial (started by the sweep, not by hand)."""
    from gapforge_runtime.offline import force_offline

    force_offline()
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    try:
        return run_trial(spec)
    except RuntimeFailure as failure:
        print(failure.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
