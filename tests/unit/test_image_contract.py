"""The image contract (gapforge_runtime.image_contract) is what the builder writes: the paths, the
user and the environment the runtime finds its inputs by. Until the builder imports the contract
itself, these tests catch the two sides drifting apart."""

from __future__ import annotations

import ast
from pathlib import Path

from gapforge_runtime import image_contract as contract

from gapforge import image, profile
from gapforge.fetch import rootfs

REPO = Path(__file__).resolve().parents[2]


def test_the_image_env_points_the_runtime_at_the_contracts_paths() -> None:
    env = image.image_env(profile.load_profile("cpu"))
    assert env[contract.RECIPE_ENV] == contract.RECIPE_FILE
    assert env[contract.MODEL_ENV] == contract.MODEL_DIR
    assert env[contract.MODELS_ENV] == contract.MODELS_DIR
    assert env[contract.LLAMA_CPP_ENV] == contract.LLAMA_CPP_DIR
    assert env[contract.OUT_ENV] == contract.OUT_DIR
    assert env[contract.PROFILE_ENV] == "cpu"
    assert env["HOME"] == contract.HOME


def test_the_builder_lays_out_and_runs_the_image_as_the_contract_says() -> None:
    assert f"/{image.PREFIX}" == contract.PREFIX
    assert f"/{image.RECIPE_DIR}" == contract.RECIPE_DIR
    assert (rootfs.USER_NAME, rootfs.USER_ID) == (contract.USER_NAME, contract.USER_ID)
    assert (rootfs.HOME, rootfs.IMAGE_USER) == (contract.HOME, contract.IMAGE_USER)
    assert profile.CPU_BASELINE_ENV == contract.CPU_BASELINE_ENV
    assert profile.TRITON_LAUNCHER_ENV == contract.TRITON_LAUNCHER_ENV
    assert profile.TRITON_LAUNCHER_DIR == contract.TRITON_LAUNCHER_DIR


def test_the_contract_imports_nothing_so_the_builder_may_import_it() -> None:
    tree = ast.parse((REPO / "runtime/gapforge_runtime/image_contract.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert imports == []
