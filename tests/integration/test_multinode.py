"""Two containers of the sealed tiny image train as two nodes of one torchrun job (c10d, gloo) over an
internal Docker network: they reach each other and nothing else. Both finish with the same
checkpoints, node 0 writes the report, and the final validation loss matches a single-process run of
the same global batch within 5 %."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Built, gapforge


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def internal_network() -> Iterator[str]:
    name = f"gf-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", "--internal", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["docker", "network", "rm", name], check=False, capture_output=True)


def _evals(out: Path) -> list[float]:
    history = json.loads((out / "train_history.json").read_text())
    return [h["eval_loss"] for h in history if "eval_loss" in h]


def _single_process_reference(built: Built, data: Path, tmp_path: Path) -> Path:
    """The image's own recipe with twice the batch (2 nodes x batch), run in one sealed process."""
    from gapforge import engine

    shown = subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", built.ref,
                            "-c", 'cat "$GAPFORGE_RECIPE"'], capture_output=True, text=True, check=True)  # fmt: skip
    recipe = json.loads(shown.stdout)
    recipe["train"]["batch_size"] *= 2
    folder = tmp_path / "reference-recipe"
    folder.mkdir()
    (folder / "recipe.json").write_text(json.dumps(recipe))
    (folder / recipe["data"]["sample"]).parent.mkdir(parents=True, exist_ok=True)
    (folder / recipe["data"]["sample"]).write_bytes(data.read_bytes())
    out = tmp_path / "reference"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    run = engine.SealedRun(
        image=built.report["image"]["config_digest"],
        command=["train", "--recipe", "/ref/recipe.json", "--data", "/data/train.jsonl", "--out", "/outputs"],
        mounts={str(out): "/outputs"}, read_only_mounts={str(folder): "/ref", str(data): "/data/train.jsonl"},
    )  # fmt: skip
    chunks: list[bytes] = []
    status = engine.run_sealed(engine.connect(), run, chunks.append, timeout=900)
    assert status == 0, b"".join(chunks).decode(errors="replace")[-4000:]
    return out


def test_two_containers_train_as_two_nodes(built: Built, internal_network: str, tmp_path: Path) -> None:
    gapforge("load", str(built.bundle), "--key", str(built.public_key), check=True)  # the receipt runs need
    data = built.project / "recipes/tiny/data/sample.jsonl"
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "gapforge.cli", "run", built.ref, "--key", str(built.public_key), "--data", str(data),
             "--out", str(tmp_path / f"node-{rank}"), "--nnodes", "2", "--node-rank", str(rank),
             "--network", internal_network, "--rdzv-id", "two-containers"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    for rank, (node, text) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{text[-5000:]}"
    assert "as node 0 of 2" in outputs[0] and "verdict: PASS" in outputs[0]
    assert "node 1 of 2: training done" in outputs[1]
    first, second = tmp_path / "node-0", tmp_path / "node-1"
    # both nodes hold the same checkpoints, byte for byte, and the same adapter
    names = sorted(p.name for p in (first / "checkpoints").glob("checkpoint-*"))
    assert names and names == sorted(p.name for p in (second / "checkpoints").glob("checkpoint-*"))
    for name in names:
        assert _sha(first / "checkpoints" / name / "adapter_model.safetensors") == _sha(
            second / "checkpoints" / name / "adapter_model.safetensors"
        )
    assert _sha(first / "adapter/adapter_model.safetensors") == _sha(second / "adapter/adapter_model.safetensors")
    record = json.loads((first / "steps/train.json").read_text())
    assert record["details"]["world_size"] == 2
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["passed"] is True and not (second / "manifest.json").exists()
    # the same global batch in one process: the final validation loss agrees within 5 %
    reference = _single_process_reference(built, data, tmp_path)
    assert _evals(first)[-1] == pytest.approx(_evals(reference)[-1], rel=0.05)


def test_a_network_with_a_way_out_is_refused(built: Built, tmp_path: Path) -> None:
    name = f"gf-open-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)
    try:
        refused = gapforge("run", built.ref, "--data", str(built.project / "recipes/tiny/data/sample.jsonl"),
                           "--out", str(tmp_path / "out"), "--nnodes", "2", "--node-rank", "0", "--network", name)  # fmt: skip
    finally:
        subprocess.run(["docker", "network", "rm", name], check=False, capture_output=True)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "is not internal" in refused.stderr and "docker network create --internal" in refused.stderr
    assert not (tmp_path / "out").exists()
