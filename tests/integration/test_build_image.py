"""Build a tiny recipe into a sealed image with the real pipeline and run it in the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]


def _build(project: Path, out: Path, *extra: str, cache: Path | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if cache is not None:
        env["GAPFORGE_CACHE"] = str(cache)
    command = [
        sys.executable, "-m", "gapforge.cli", "build", str(project / "recipes/tiny/tiny.yaml"),
        "--lock-dir", str(project / "lockfiles"), "--out", str(out), *extra,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads((out / "tiny-desk-0.0.1" / "build.json").read_text())
    return report


@pytest.fixture(scope="module")
def first_build(docker_engine: None, tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _build(tiny_project, tmp_path_factory.mktemp("out-first"), "--no-pretest")  # test_bundle pretests


def test_image_loads_and_info_runs_with_the_network_cut(first_build: dict[str, Any]) -> None:
    image = first_build["image"]
    inspect = subprocess.run(
        ["docker", "image", "inspect", image["ref"], "--format", "{{.Id}} {{.Config.User}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    image_id, user = inspect.stdout.split()
    assert image_id == image["config_digest"]
    assert user == "1000:1000"
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--read-only", image["ref"], "info", "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["recipe"] == {"name": "tiny-desk", "version": "0.0.1"}
    assert info["packages"]["torch"].startswith("2.13.0")
    for package in ("transformers", "peft", "llama_cpp_python"):
        assert info["packages"][package] != "not installed"
    assert info["offline"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert info["python"].startswith("3.11")


def test_network_really_is_cut_inside(first_build: dict[str, Any]) -> None:
    probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "/opt/gapforge/venv/bin/python",
         first_build["image"]["ref"], "-c", probe],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode != 0
    assert "unreachable" in run.stderr.lower()


def test_skopeo_reads_the_same_config_digest(first_build: dict[str, Any]) -> None:
    tar = first_build["image"]["tar"]
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{tar}"], capture_output=True, text=True, check=True)
    manifest = json.loads(raw.stdout)
    assert manifest["config"]["digest"] == first_build["image"]["config_digest"]
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in first_build["layers"]]


def test_layers_are_in_design_order(first_build: dict[str, Any]) -> None:
    names = [layer["name"] for layer in first_build["layers"]]
    assert names[0] == "base" and names[-3:] == ["model", "runtime", "recipe"]
    assert "wheels:torch" in names and "wheels" in names


def test_recipe_only_change_rewrites_only_the_top_layer(
    first_build: dict[str, Any], tiny_project: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    subprocess.run(["cp", "-a", str(tiny_project), str(project)], check=True)
    recipe_path = project / "recipes/tiny/tiny.yaml"
    text = recipe_path.read_text()
    data = yaml.safe_load(text)
    # A learning rate no earlier run used, so a warm shared cache cannot already hold this layer.
    data["train"]["learning_rate"] = 5e-4 + (time.time_ns() % 10**6) * 1e-12
    recipe_path.write_text(text.splitlines()[0] + "\n" + yaml.safe_dump(data, sort_keys=False))
    second = _build(project, tmp_path / "out", "--no-smoke")
    before = [(layer["name"], layer["digest"]) for layer in first_build["layers"]]
    after = [(layer["name"], layer["digest"]) for layer in second["layers"]]
    assert before[:-1] == after[:-1]
    assert before[-1][0] == after[-1][0] == "recipe" and before[-1][1] != after[-1][1]
    assert second["layers_written"] == ["recipe"]


@pytest.mark.skipif(
    os.environ.get("GAPFORGE_TEST_SKIP_COLD_REBUILD") == "1",
    reason="GAPFORGE_TEST_SKIP_COLD_REBUILD=1: skipping the rebuild from an empty cache (~6 min on 2 cores)",
)
def test_rebuild_with_another_empty_cache_is_byte_identical(
    first_build: dict[str, Any], tiny_project: Path, tmp_path: Path
) -> None:
    """Everything fetched and built again from nothing (the llama.cpp wheel too) gives the same bytes."""
    second = _build(tiny_project, tmp_path / "out", "--no-load", cache=tmp_path / "other-cache")
    assert second["cache"] == str(tmp_path / "other-cache")
    assert second["layers"] == first_build["layers"]
    assert second["image"]["tar_sha256"] == first_build["image"]["tar_sha256"]
    assert second["image"]["manifest_digest"] == first_build["image"]["manifest_digest"]
