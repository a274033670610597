"""Training across nodes: two `gapforge-runtime train` processes, each a node of one torchrun job
(c10d rendezvous on localhost, gloo), each with its own output folder. They finish with the same
checkpoints and adapter, match a single-process run of the same global batch, and a node whose
peer never joins stops with a clear message."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(recipe: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gapforge_runtime.cli", "train", "--recipe", str(recipe),
            "--model", str(model), "--out", str(out), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def nodes(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nodes")
    single = write_recipe(root / "single", batch_size=4)
    double = write_recipe(root / "double", batch_size=2)  # 2 nodes x 1 process x 2 = 4
    one = subprocess.run(_command(single, tiny_model, root / "out-1"), capture_output=True,
                         text=True, check=False, timeout=600, env=_env())  # fmt: skip
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    endpoint = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _command(
                double,
                tiny_model,
                root / f"node-{rank}",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "t1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{text[-4000:]}"
    assert "as node 0 of 2" in outputs[0] and "as node 1 of 2" in outputs[1]
    assert "node 1 of 2: training done" in outputs[1]
    return {"one": root / "out-1", "n0": root / "node-0", "n1": root / "node-1"}


def test_two_nodes_agree_on_checkpoints_and_adapter(nodes: dict[str, Path]) -> None:
    names = [
        sorted(p.name for p in (nodes[n] / "checkpoints").glob("checkpoint-*"))
        for n in ("n0", "n1")
    ]
    assert names[0] and names[0] == names[1]
    for name in names[0]:
        a, b = (nodes[n] / "checkpoints" / name for n in ("n0", "n1"))
        assert _sha(a / "adapter_model.safetensors") == _sha(b / "adapter_model.safetensors")
        assert (a / ".complete").is_file() and (b / ".complete").is_file()
    adapters = [nodes[n] / "adapter" / "adapter_model.safetensors" for n in ("n0", "n1")]
    assert _sha(adapters[0]) == _sha(adapters[1])
    # node 0 recorded the step; node 1 wrote no manifest (node 0 finishes the run)
    record = json.loads((nodes["n0"] / "steps" / "train.json").read_text())
    assert record["details"]["world_size"] == 2
    assert (nodes["n0"] / "manifest.json").is_file() and not (
        nodes["n1"] / "manifest.json"
    ).exists()


def test_two_nodes_match_one_process(nodes: dict[str, Path]) -> None:
    def evals(out: Path) -> list[float]:
        history = json.loads((out / "train_history.json").read_text())
        return [h["eval_loss"] for h in history if "eval_loss" in h]

    one, two = evals(nodes["one"]), evals(nodes["n0"])
    assert len(one) == len(two) >= 1
    assert two[-1] == pytest.approx(one[-1], rel=0.05)


def test_a_node_alone_stops_with_a_clear_message(tiny_model: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", batch_size=2)
    endpoint = f"127.0.0.1:{_free_port()}"
    alone = subprocess.run(
        _command(recipe, tiny_model, tmp_path / "out", "--nnodes", "2", "--node-rank", "0",
                 "--rdzv-endpoint", endpoint, "--rdzv-timeout", "5"),
        capture_output=True, text=True, check=False, timeout=300, env=_env(),
    )  # fmt: skip
    assert alone.returncode == 2, alone.stdout[-2000:] + alone.stderr[-2000:]
    assert "node 0 of 2: the training job ended with an error" in alone.stderr
    assert "--resume on every node" in alone.stderr
    assert "Traceback" not in alone.stderr.split("node 0 of 2:")[-1]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--nnodes", "2", "--rdzv-endpoint", "h:1"], "--node-rank None"),
        (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"], "0 to 1"),
        (["--nnodes", "2", "--node-rank", "1"], "needs --rdzv-endpoint"),
        (["--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "h:99999"], "expected HOST:PORT"),
        (["--node-rank", "1"], "are for jobs across nodes"),
    ],
)
def test_bad_node_options_exit_2(
    tiny_model: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    recipe = write_recipe(tmp_path / "r", batch_size=2)
    bad = subprocess.run(_command(recipe, tiny_model, tmp_path / "out", *extra),
                         capture_output=True, text=True, check=False, timeout=120, env=_env())  # fmt: skip
    assert bad.returncode == 2 and needle in bad.stderr, bad.stderr[-1500:]
    assert "Traceback" not in bad.stderr and not (tmp_path / "out" / "adapter").exists()


def _kill_node(folder: Path) -> None:
    """SIGKILL every process whose command line names `folder`, as a node's death would (torchrun
    starts its workers in a session of their own, so killing the launcher's group is not enough)."""
    import signal

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(folder).encode() in command and int(proc.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def test_a_node_killed_mid_run_ends_the_job_and_resume_continues(tiny_model: Path, tmp_path: Path) -> None:
    import time

    recipe = write_recipe(tmp_path / "r", batch_size=2, max_steps=60, eval_every=4)
    endpoint = f"127.0.0.1:{_free_port()}"

    def start(rank: int, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            _command(recipe, tiny_model, tmp_path / f"node-{rank}", "--nnodes", "2", "--node-rank", str(rank),
                     "--rdzv-endpoint", endpoint, "--rdzv-id", "killed", *extra),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), start_new_session=True,
        )  # fmt: skip

    first = [start(0), start(1)]
    deadline = time.monotonic() + 300
    while not list((tmp_path / "node-1" / "checkpoints").glob("checkpoint-*/.complete")):
        assert time.monotonic() < deadline and first[1].poll() is None, "node 1 never wrote a checkpoint"
        time.sleep(0.05)
    _kill_node(tmp_path / "node-1")  # the whole node: its runtime, torchrun agent and worker
    text = first[0].communicate(timeout=300)[0]
    first[1].communicate(timeout=60)
    assert first[0].returncode == 2, text[-3000:]
    assert "node 0 of 2: the training job ended with an error" in text and "--resume on every node" in text
    # both nodes kept at least one complete checkpoint; the same commands with --resume finish the job
    again = [start(0, "--resume"), start(1, "--resume")]
    outputs = [p.communicate(timeout=600)[0] for p in again]
    for rank, (proc, out) in enumerate(zip(again, outputs, strict=True)):
        assert proc.returncode == 0, f"node {rank}:\n{out[-4000:]}"
    record = json.loads((tmp_path / "node-0" / "steps" / "train.json").read_text())
    assert record["details"]["resumed_from_step"] and record["details"]["global_step"] == 60
    adapters = [tmp_path / f"node-{r}" / "adapter" / "adapter_model.safetensors" for r in (0, 1)]
    assert _sha(adapters[0]) == _sha(adapters[1])
