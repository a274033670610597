"""A recipe whose feature set the image lacks stops before any work, exit 2, naming the feature and
the recipe field; the image's feature record is what decides (gapforge_runtime/features.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_recipe
from gapforge_runtime.features import FEATURES, FEATURES_ENV, installed_features


def _run(recipe: Path, out: Path, record: Path | None) -> subprocess.CompletedProcess[str]:
    """`gapforge-runtime run` as the image's entry point runs it, with or without an image record."""
    env = {k: v for k, v in os.environ.items() if k != FEATURES_ENV}
    if record is not None:
        env[FEATURES_ENV] = str(record)
    command = [sys.executable, "-m", "gapforge_runtime.cli", "run", "--recipe", str(recipe),
               "--model", str(out / "no-model"), "--out", str(out / "out")]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)


def _base_image_record(path: Path) -> Path:
    """The record an image of the default recipe holds: the base set and nothing else."""
    path.write_text(json.dumps({"features": ["base"], "fields": {}, "wheels": {"base": []}}))
    return path


def test_a_dpo_recipe_in_a_base_image_stops_with_exit_2_naming_the_field(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe", rows=[], data_format="preference", method="dpo")
    raw = json.loads(recipe.read_text())
    raw["data"]["pii"] = {"presidio": False}  # as the default recipe: no `ner` either
    recipe.write_text(json.dumps(raw))
    result = _run(recipe, tmp_path, _base_image_record(tmp_path / "features.json"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "feature 'preference'" in result.stderr and "train.method: dpo" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists(), "nothing may be started or written before the check"


def test_the_default_pii_check_needs_ner_and_says_how_to_leave_it_out(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe", rows=[])  # pii.presidio left at its default (on)
    result = _run(recipe, tmp_path, _base_image_record(tmp_path / "features.json"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "feature 'ner'" in result.stderr and "data.pii.presidio" in result.stderr


def test_an_unreadable_record_refuses_rather_than_guessing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "recipe", rows=[])
    broken = tmp_path / "features.json"
    broken.write_text('{"features": "base"}')
    result = _run(recipe, tmp_path, broken)
    assert result.returncode == 2 and "feature record cannot be read" in result.stderr
    result = _run(recipe, tmp_path, tmp_path / "absent.json")
    assert result.returncode == 2 and "feature record cannot be read" in result.stderr


def test_outside_an_image_the_installed_modules_decide() -> None:
    # the runtime tier's venv holds the whole lock, so every feature is there; the same code in a
    # venv without TRL would leave `preference` out (the modules, not a guess)
    assert installed_features() == {"base", *FEATURES}
