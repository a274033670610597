"""Tracking (MLflow on SQLite), training metrics (Prometheus textfile and HTTP), the progress line,
and the proof that none of it, nor a tiny training through the same code path, opens a network
connection."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import chat_examples, write_recipe
from gapforge_runtime.config import RecipeSettings, load_recipe_settings
from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.monitoring import TEXTFILE, ProgressLine, TrainingMetrics, TrainingUpdate
from gapforge_runtime.offline import OFFLINE_VARIABLES
from gapforge_runtime.tracking import (
    DATABASE,
    FOLDER,
    Tracker,
    evaluation_metrics,
    recorded_run,
    tracking_uri,
)

from tests.requirements import require_module

EVALUATION = {
    "models": {
        "base": {"name": "base", "loss": 3.2, "perplexity": 24.5, "tokens": 90, "size_bytes": 10},
        "merged": {"name": "merged", "loss": 2.1, "perplexity": 8.2, "tokens": 90, "size_bytes": 10},
        "gguf:q8_0": {"name": "gguf:q8_0", "loss": 2.11, "perplexity": 8.3, "tokens": 90, "size_bytes": 5},
    },
    "delta_vs_merged_pct": {"gguf:q8_0": 1.2},
    "gates": [{"name": "improvement", "passed": True, "detail": "..."}],
    "passed": True,
    "judge": {"win_rate_vs_base": 0.75, "ties": 1},
    "task_metrics": {"merged": {"exact_match": 0.5, "f1": 0.61}},
    "samples": [{"prompt": "p", "reference": "r", "answers": {"base": "a"}}],
}


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's environment (telemetry off), undone after the test."""
    for name, value in OFFLINE_VARIABLES.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def recipe(tmp_path: Path) -> RecipeSettings:
    return load_recipe_settings(str(write_recipe(tmp_path / "recipe", max_steps=4, eval_every=2)))


def update(step: int, **logs: float) -> TrainingUpdate:
    """A training (loss) or evaluation (eval_loss) update of a 10-step training at 2 s a step."""
    return TrainingUpdate(step=step, total_steps=10, logs=logs, seconds_per_step=2.0,
                          tokens_per_second=1234.5, gpu_memory_allocated=2**20, gpu_memory_reserved=2**21)  # fmt: skip


def test_offline_variables_turn_every_telemetry_off(offline_env: None) -> None:
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["WANDB_MODE"] == "disabled"
    require_module("mlflow")
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY

    assert MLFLOW_DISABLE_TELEMETRY.get() is True  # what MLflow's telemetry client reads


def test_evaluation_metrics_take_every_score() -> None:
    metrics = evaluation_metrics(EVALUATION)
    assert metrics["test_loss/merged"] == 2.1 and metrics["test_perplexity/gguf_q8_0"] == 8.3
    assert metrics["perplexity_delta_pct/gguf_q8_0"] == 1.2 and metrics["passed"] == 1.0
    assert metrics["judge/win_rate_vs_base"] == 0.75 and metrics["task_metrics/merged/f1"] == 0.61
    assert not any(key.startswith(("gates", "samples")) for key in metrics)


def test_mlflow_run_in_sqlite_and_resumed(tmp_path: Path, recipe: RecipeSettings, offline_env: None) -> None:
    require_module("mlflow")
    import mlflow
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    out.mkdir()
    tracker = Tracker(out, recipe, continue_run=False)
    for step in (1, 2):
        tracker(update(step, loss=2.0 / step, learning_rate=0.01, grad_norm=1.5))
    tracker(update(2, eval_loss=1.7))
    (out / "evaluation.json").write_text(json.dumps(EVALUATION))
    (out / "report.md").write_text("# report\n")
    tracker.finish()
    assert tracker.error is None and tracker.run_id == recorded_run(out)
    assert (out / FOLDER / DATABASE).is_file()

    mlflow.set_tracking_uri(tracking_uri(out))
    client = MlflowClient(tracking_uri=tracking_uri(out))
    runs = mlflow.search_runs(experiment_names=["tiny-desk"], output_format="list")
    assert [r.info.run_id for r in runs] == [tracker.run_id]
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("tiny-desk-0.1.0-")
    assert run.data.params["train.learning_rate"] == "0.01" and run.data.params["lora.r"] == "8"
    assert run.data.params["recipe_sha256"] == recipe.sha256 and run.data.params["profile"] == "cpu"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "train_loss")] == [2.0, 1.0]
    assert run.data.metrics["eval_loss"] == 1.7 and run.data.metrics["tokens_per_second"] == 1234.5
    assert run.data.metrics["test_perplexity/merged"] == 8.2
    assert run.data.metrics["judge/win_rate_vs_base"] == 0.75
    assert sorted(a.path for a in client.list_artifacts(tracker.run_id)) == ["evaluation.json", "report.md"]

    resumed = Tracker(out, recipe, continue_run=True)  # --resume: the same run goes on
    resumed(update(3, loss=0.5))
    resumed.finish("KILLED")
    assert resumed.run_id == tracker.run_id and resumed.error is None
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert len(client.get_metric_history(tracker.run_id, "train_loss")) == 3

    fresh = Tracker(out, recipe, continue_run=False)  # --force: a new run in the same experiment
    fresh.finish()
    assert fresh.run_id not in (None, tracker.run_id) and recorded_run(out) == fresh.run_id


def test_textfile_and_http_metrics(tmp_path: Path) -> None:
    require_module("prometheus_client")
    textfile = tmp_path / TEXTFILE
    metrics = TrainingMetrics("tiny-desk", "0.1.0", textfile, port=0, host="127.0.0.1")
    try:
        for step in (1, 2, 3):
            metrics(update(step, loss=3.0 - step, learning_rate=0.001 * step, grad_norm=0.5))
        metrics(update(3, eval_loss=1.25))
        text = textfile.read_text()
        labels = '{recipe="tiny-desk",version="0.1.0"}'
        for line in (f"gapforge_train_step{labels} 3.0", f"gapforge_train_total_steps{labels} 10.0",
                     f"gapforge_train_loss{labels} 0.0", f"gapforge_train_eval_loss{labels} 1.25",
                     f"gapforge_train_learning_rate{labels} 0.003", f"gapforge_train_grad_norm{labels} 0.5",
                     f"gapforge_train_tokens_per_second{labels} 1234.5", f"gapforge_train_eta_seconds{labels} 14.0",
                     f"gapforge_gpu_memory_allocated_bytes{labels} 1.048576e+06"):  # fmt: skip
            assert line in text.splitlines(), line
        assert f"gapforge_train_last_step_timestamp_seconds{labels}" in text
        assert not list(tmp_path.rglob("*.tmp*")), "written atomically: no temporary file left"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as reply:
            served = reply.read().decode()
        assert f"gapforge_train_step{labels} 3.0" in served and "gapforge_train_grad_norm" in served
        with pytest.raises(RuntimeFailure, match=f"--metrics-port {metrics.port}: cannot serve metrics"):
            TrainingMetrics("tiny-desk", "0.1.0", None, port=metrics.port, host="127.0.0.1")
    finally:
        metrics.close()


def test_progress_line_plain_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, tty=False)
    progress(update(1, loss=2.5, learning_rate=0.01))
    progress(update(2, eval_loss=2.25))
    progress(update(3, loss=2.0))
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[train] step  1/10  loss 2.5000  1,234 tok/s  eta 18s",
        "[train] step  2/10  eval loss 2.2500",
        "[train] step  3/10  loss 2.0000  eval 2.2500  1,234 tok/s  eta 14s",
    ]
    assert "\r" not in stream.getvalue()


def test_progress_line_rewritten_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream, tty=True)
    for step in (1, 2):
        progress(update(step, loss=1.0))
    progress(update(2, eval_loss=0.9))  # the step's line again, with the eval loss on it
    progress.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert text.rstrip("\n").rsplit("\r", 1)[1] == "[train] step  2/10  loss 1.0000  eval 0.9000  1,234 tok/s  eta 16s\x1b[K"


class NetworkAttempts:
    """socket's connect, connect_ex, create_connection and getaddrinfo, refusing anything but loopback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

        def guarded(original: Any) -> Any:
            def call(sock: socket.socket, address: Any, *args: Any) -> Any:
                self.check(address, sock.family)
                return original(sock, address, *args)

            return call

        def guarded_create(address: Any, *args: Any, **kwargs: Any) -> Any:
            self.check(address, socket.AF_INET)
            return create_connection(address, *args, **kwargs)

        def guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
            self.check((host, 0), socket.AF_INET)
            return getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", guarded(connect))
        monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
        monkeypatch.setattr(socket, "create_connection", guarded_create)
        monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)

    def check(self, address: Any, family: int) -> None:
        if family == getattr(socket, "AF_UNIX", None):
            return  # a local socket file (sqlite never uses one; multiprocessing may)
        host = address[0] if isinstance(address, tuple) else address
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host in ("localhost", "", None):
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        self.attempts.append(f"{host}:{address[1] if isinstance(address, tuple) else ''}")
        raise OSError(f"network access attempted in an offline test: {address!r}")


def test_no_step_attempts_a_network_connection(
    tmp_path: Path, tiny_model: Path, recipe: RecipeSettings, offline_env: None,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Tracking, the textfile, a metrics server on loopback and a tiny training: no connection out."""
    require_module("mlflow")
    from gapforge_runtime.data.encoding import encode_split
    from gapforge_runtime.methods.sft import train_adapter
    from gapforge_runtime.modelio import load_tokenizer

    network = NetworkAttempts(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    tracker = Tracker(out, recipe, continue_run=False)
    metrics = TrainingMetrics(recipe.name, recipe.version, out / TEXTFILE, port=0, host="127.0.0.1")
    tokenizer = load_tokenizer(tiny_model)
    rows = chat_examples(16)
    train_set, _ = encode_split(tokenizer, "chat", rows[:12], 96)
    validation_set, _ = encode_split(tokenizer, "chat", rows[12:], 96)
    try:
        result = train_adapter(recipe, tiny_model, tokenizer, train_set, validation_set,
                               out / "checkpoints", out / "adapter", out / "train_log.jsonl",
                               resume=False, observers=[metrics, tracker])  # fmt: skip
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as reply:
            assert 'gapforge_train_step{recipe="tiny-desk",version="0.1.0"} 4.0' in reply.read().decode()
    finally:
        metrics.close()
        (out / "report.md").write_text("# report\n")
        tracker.finish()
    assert network.attempts == []
    assert result.global_step == 4 and tracker.error is None

    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("[train] step")]
    assert len(lines) == 6, printed  # 4 steps and 2 evaluations, one plain line each (not a TTY)
    assert lines[0].startswith("[train] step 1/4  loss ") and "tok/s  eta " in lines[0]
    assert "{'loss'" not in printed and "'eval_loss'" not in printed, "no raw metric dictionaries"
    assert 'gapforge_train_step{recipe="tiny-desk",version="0.1.0"} 4.0' in (out / TEXTFILE).read_text()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(out))
    assert tracker.run_id is not None
    assert len(client.get_metric_history(tracker.run_id, "train_loss")) == 4
    assert len(client.get_metric_history(tracker.run_id, "eval_loss")) == 2


def test_network_guard_catches_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard above is not vacuous: a connection or a name look-up outside this host is caught."""
    network = NetworkAttempts(monkeypatch)
    with pytest.raises(OSError, match="offline test"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    with pytest.raises(OSError, match="offline test"), socket.socket() as sock:
        sock.connect(("198.51.100.7", 443))
    with pytest.raises(OSError, match="offline test"):
        socket.getaddrinfo("mlflow-telemetry.io", 443)
    assert network.attempts == ["192.0.2.1:80", "198.51.100.7:443", "mlflow-telemetry.io:0"]


def test_dashboard_plots_the_metrics_training_writes() -> None:
    from gapforge_runtime.monitoring import GAUGES

    path = Path(__file__).parents[2] / "images" / "templates" / "grafana-dashboard.json"
    dashboard = json.loads(path.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for expr in exprs for name in re.findall(r"gapforge_\w+", expr)}
    assert used == set(GAUGES), "every gauge has a panel, every panel a gauge"
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Loss", "Learning rate", "Gradient norm", "Tokens per second", "GPU memory",
            "Step progress", "Seconds since last step"} <= titles  # fmt: skip


def test_torchrun_training_is_replayed_from_the_log(tmp_path: Path) -> None:
    """The ranks of a --nproc training are other processes: their log reaches the observers after."""
    from gapforge_runtime.steps.train import replay_train_log

    log = tmp_path / "train_log.jsonl"
    entries = [{"step": 1, "time": 1.5, "loss": 2.0, "learning_rate": 0.1, "epoch": 0.5},
               {"step": 2, "time": 2.5, "eval_loss": 1.5, "eval_runtime": 0.1},
               {"step": 2, "time": 3.0, "train_runtime": 9.0, "train_loss": 1.9}]  # fmt: skip
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    seen: list[TrainingUpdate] = []
    replay_train_log(log, 2, [seen.append])
    assert [(u.step, u.total_steps, u.is_eval, u.time) for u in seen] == [(1, 2, False, 1.5), (2, 2, True, 2.5)]
    assert seen[0].logs["loss"] == 2.0
