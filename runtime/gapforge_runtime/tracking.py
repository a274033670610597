"""Experiment tracking: one MLflow run per pipeline run, on SQLite inside the output folder.

    OUT/mlflow/mlflow.db        the tracking store (MLflow 3.x's file store is deprecated)
    OUT/mlflow/artifacts/       the runs' artifacts (report.md, report.html, manifest.json, evaluation.json)
    OUT/mlflow/run.json         the run id, so `--resume` (or a later step command) continues that run

The experiment is named after the recipe; the run after the recipe, its version and the start time.
Params: the recipe's train/lora/quantize fields flattened, the recipe's sha256, the image's profile.
Metrics: loss, learning rate, grad norm, eval loss and tokens/s at each logging step; at the end the
test loss/perplexity of every model and whatever else evaluation.json holds in numbers (win rates,
task metrics).

Importing MLflow (0.6 to 1.2 s) and creating a fresh database (alembic migrations: 1 to 8 s, mostly
waiting on fsync, about 1.3 s of CPU) run in a writer thread of its own, started at the first metrics
(during training, not during the data step); the pipeline only queues, the thread writes at most every
5 s. Measured on 2 cores, a training of 80 steps (about 20 s): about 3 s more with tracking than with
`--no-tracking`. Nothing here opens a network connection (the tracking URI is a file; the telemetry
is off: offline.py). A failure of the tracking is reported and never fails the run.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from gapforge_runtime.config import RecipeSettings
from gapforge_runtime.files import write_json_atomic
from gapforge_runtime.monitoring import TrainingUpdate

FOLDER = "mlflow"
DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
RUN_RECORD = "run.json"
FINAL_ARTIFACTS = ("report.md", "report.html", "manifest.json", "evaluation.json")
STEP_METRICS = {
    "loss": "train_loss",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "eval_loss": "eval_loss",
}
"""Trainer's log keys → our metric names."""
_NOT_SCORES = {"models", "gates", "samples", "passed", "delta_vs_merged_pct"}
"""evaluation.json sections handled by name (or not numbers worth a metric)."""


def tracking_uri(out_root: Path) -> str:
    """`sqlite:////abs/OUT/mlflow/mlflow.db`."""
    return f"sqlite:///{(out_root / FOLDER / DATABASE).resolve()}"


def metric_key(*parts: str) -> str:
    """A metric or param name MLflow accepts: `gguf:q8_0` → `gguf_q8_0`, parts joined by `/`."""
    return "/".join(re.sub(r"[^\w.\- ]", "_", part) for part in parts)


def recipe_params(recipe: RecipeSettings) -> dict[str, str]:
    """The recipe's train, lora and quantize fields flattened (`train.learning_rate`), its sha256
    and the image's profile."""
    params = {"recipe_sha256": recipe.sha256, "profile": recipe.profile, "recipe": recipe.name,
              "version": recipe.version, "quantize": ",".join(recipe.quantize)}  # fmt: skip
    for section, values in (
        ("train", recipe.train.model_dump()),
        ("lora", recipe.lora.model_dump()),
    ):
        for name, value in values.items():
            shown = ",".join(value) if isinstance(value, list) else value
            params[f"{section}.{name}"] = str(shown)
    return params


def step_metrics(update: TrainingUpdate) -> dict[str, float]:
    """The metrics of one logging step: train loss, learning rate, grad norm, eval loss, tokens/s."""
    metrics = {
        ours: float(update.logs[key]) for key, ours in STEP_METRICS.items() if key in update.logs
    }
    if update.tokens_per_second is not None and not update.is_eval:
        metrics["tokens_per_second"] = float(update.tokens_per_second)
    return metrics


def _numbers(value: Any, prefix: tuple[str, ...]) -> dict[str, float]:
    if isinstance(value, bool):
        return {metric_key(*prefix): 1.0 if value else 0.0}
    if isinstance(value, int | float):
        return {metric_key(*prefix): float(value)}
    found: dict[str, float] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            found.update(_numbers(inner, (*prefix, str(key))))
    return found


def evaluation_metrics(evaluation: dict[str, Any]) -> dict[str, float]:
    """Final metrics from evaluation.json: test loss and perplexity per model, the perplexity deltas,
    the verdict (1 pass, 0 fail), and every number of any other section (win rates, task metrics)."""
    metrics: dict[str, float] = {}
    for model, score in evaluation.get("models", {}).items():
        for field in ("loss", "perplexity"):
            if isinstance(score.get(field), int | float):
                metrics[metric_key(f"test_{field}", model)] = float(score[field])
    for model, delta in evaluation.get("delta_vs_merged_pct", {}).items():
        if isinstance(delta, int | float):
            metrics[metric_key("perplexity_delta_pct", model)] = float(delta)
    if isinstance(evaluation.get("passed"), bool):
        metrics["passed"] = 1.0 if evaluation["passed"] else 0.0
    for section, value in evaluation.items():
        if section not in _NOT_SCORES:
            metrics.update(_numbers(value, (section,)))
    return metrics


def run_name(recipe: RecipeSettings, started: float) -> str:
    """`<recipe>-<version>-<UTC time>`."""
    return f"{recipe.name}-{recipe.version}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}"


def recorded_run(out_root: Path) -> str | None:
    """The MLflow run id this output folder's run recorded, if any."""
    path = out_root / FOLDER / RUN_RECORD
    if not path.is_file():
        return None
    return str(json.loads(path.read_text(encoding="utf-8"))["run_id"])


FLUSH_SECONDS = 5.0
"""The writer thread writes what was queued at most this often: one SQLite transaction for many
steps (a transaction a step slowed a fast training down measurably on 2 cores)."""
BATCH = 1000
"""MLflow's limit of metrics in one log_batch."""


class Tracker:
    """One MLflow run for this pipeline run; every call only queues, a writer thread writes.

    `continue_run`: continue the run recorded in the output folder (`--resume`, or a later step
    command on the same outputs) instead of starting a new one.
    """

    def __init__(self, out_root: Path, recipe: RecipeSettings, continue_run: bool) -> None:
        self.out_root = out_root
        self.recipe = recipe
        self.continue_run = continue_run
        self.run_id: str | None = None
        self.setup_seconds: float | None = None
        self.error: str | None = None
        self._pending: list[tuple[str, float, int, int]] = []
        self._lock = threading.Lock()
        self._end = threading.Event()
        self._final: tuple[str, list[Path]] = ("FINISHED", [])
        self._started = time.time()
        self._thread = threading.Thread(target=self._work, name="gapforge-mlflow", daemon=True)

    def _start(self) -> None:
        """Start the writer at the first metrics, not before: MLflow's import competes for the
        interpreter lock with the data step's Python (+2 s measured), not with training's torch."""
        if self._thread.ident is None:
            self._thread.start()

    # --- what the pipeline calls (never waits for MLflow) ---

    def __call__(self, update: TrainingUpdate) -> None:
        """A TrainingObserver: the step's metrics, at the step and time of the update."""
        self.log_metrics(step_metrics(update), update.step, update.time)

    def log_metrics(self, metrics: dict[str, float], step: int, at: float | None = None) -> None:
        """Queue metrics at `step` (unix time `at`, default now)."""
        millis = int((at if at is not None else time.time()) * 1000)
        with self._lock:
            self._pending.extend((key, value, millis, step) for key, value in metrics.items())
        self._start()

    def finish(self, status: str = "FINISHED", timeout: float = 120.0) -> None:
        """Queue the final metrics (evaluation.json) and artifacts of the output folder, end the run
        with `status` (FINISHED, FAILED, KILLED) and wait for the writer thread."""
        evaluation = self.out_root / "evaluation.json"
        if evaluation.is_file():
            data = json.loads(evaluation.read_text(encoding="utf-8"))
            self.log_metrics(evaluation_metrics(data), step=0)
        self._final = (
            status,
            [p for p in (self.out_root / n for n in FINAL_ARTIFACTS) if p.is_file()],
        )
        self._end.set()
        self._start()
        self._thread.join(timeout)
        if self.error is not None:
            print(f"[tracking] MLflow tracking failed ({self.error}); the run's outputs are not affected", flush=True)  # fmt: skip
        elif self._thread.is_alive():
            print(f"[tracking] MLflow did not finish writing within {timeout:.0f}s", flush=True)

    # --- the writer thread ---

    def _work(self) -> None:
        try:  # tracking must never fail the run: an error is kept and reported by finish
            client, run_id = self._open()
            while not self._end.wait(FLUSH_SECONDS):
                self._flush(client, run_id)
            self._flush(client, run_id)
            status, files = self._final
            for path in files:
                client.log_artifact(run_id, str(path))
            client.set_terminated(run_id, status=status)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def _flush(self, client: Any, run_id: str) -> None:
        from mlflow.entities import Metric

        with self._lock:
            pending, self._pending = self._pending, []
        metrics = [Metric(key, value, millis, step) for key, value, millis, step in pending]
        for first in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[first : first + BATCH], synchronous=True)

    def _open(self) -> tuple[Any, str]:
        """Import MLflow, open (or create) the database, and start or continue the run."""
        started = time.monotonic()
        import mlflow
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." is noise
            logging.getLogger(name).setLevel(logging.WARNING)
        folder = self.out_root / FOLDER
        (folder / ARTIFACTS).mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(self.out_root)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(self.recipe.name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.recipe.name, artifact_location=(folder / ARTIFACTS).resolve().as_uri())
        )  # fmt: skip
        run_id = recorded_run(self.out_root) if self.continue_run else None
        if run_id is not None and _run_exists(client, run_id):
            client.update_run(run_id, status="RUNNING")
            how = "continued"
        else:
            name = run_name(self.recipe, self._started)
            tags = {"gapforge.recipe": self.recipe.name, "gapforge.version": self.recipe.version}
            run_id = str(client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)
            params = recipe_params(self.recipe)
            from mlflow.entities import Param

            client.log_batch(
                run_id, params=[Param(k, v) for k, v in params.items()], synchronous=True
            )
            write_json_atomic(folder / RUN_RECORD, {"run_id": run_id, "experiment_id": experiment_id, "run_name": name})  # fmt: skip
            how = "started"
        self.run_id = run_id
        self.setup_seconds = round(time.monotonic() - started, 2)
        print(f"[tracking] MLflow run {run_id} {how} in {folder / DATABASE} (ready in {self.setup_seconds:.1f}s, off the main thread)", flush=True)  # fmt: skip
        return client, run_id


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True
