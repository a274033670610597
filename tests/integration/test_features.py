"""Features select wheels, in real images: the tiny recipe's image holds the base set alone, a DPO
recipe's image adds TRL's closure in layers of its own and keeps every other wheel layer, and the
base image refuses to run a DPO recipe (exit 2, the field named) before any work."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Built, build_tiny, gapforge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

PYTHON = "/opt/gapforge/venv/bin/python"
SITE = "opt/gapforge/venv/lib/python3.11/site-packages"
PROBE = (
    "import importlib.util, json, pathlib; "
    "print(json.dumps({'record': json.loads(pathlib.Path('/opt/gapforge/features.json').read_text()), "
    "'found': {m: importlib.util.find_spec(m) is not None for m in ('torch', 'peft', 'trl', 'optuna', "
    "'lm_eval', 'spacy', 'presidio_analyzer', 'datasets')}}))"
)


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=600)


def test_the_tiny_image_holds_the_base_set_alone(built: Built) -> None:
    ref = built.ref
    label = _docker("image", "inspect", ref, "--format", '{{index .Config.Labels "io.gapforge.features"}}')
    assert label.stdout.strip() == "base"
    run = _docker("run", "--rm", "--network", "none", "--read-only", "--entrypoint", PYTHON, ref, "-c", PROBE)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["record"]["features"] == ["base"] == built.report["features"]["features"]
    assert seen["found"] == {"torch": True, "peft": True, "trl": False, "optuna": False, "lm_eval": False,
                             "spacy": False, "presidio_analyzer": False, "datasets": False}  # fmt: skip
    assert [g for g in built.report["features"]["wheels"]] == ["base"]


def test_inspect_and_the_sbom_list_the_feature_sets_and_their_wheels(built: Built) -> None:
    facts = json.loads(gapforge("inspect", str(built.bundle), "--key", str(built.public_key), "--json", check=True).stdout)
    recorded = built.report["features"]["wheels"]["base"]
    assert facts["features"]["sets"] == ["base"] and list(facts["features"]["wheels"]) == ["base"]
    assert sorted(facts["features"]["wheels"]["base"]) == sorted(recorded)  # the SBOM, signed
    assert not any(w.startswith(("trl==", "optuna==", "lm-eval==", "spacy==")) for w in recorded)
    table = gapforge("inspect", str(built.bundle), "--key", str(built.public_key), check=True)
    shown = table.stdout + table.stderr  # the table goes where the progress lines go
    assert "features" in shown and f"base {len(recorded)}" in shown


def test_a_dpo_recipe_in_the_base_image_stops_with_exit_2_naming_the_field(built: Built, tmp_path: Path) -> None:
    recipe = json.loads((built.bundle / "recipe" / "recipe.json").read_text())
    recipe["train"]["method"], recipe["data"]["format"] = "dpo", "preference"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    tmp_path.chmod(0o755)
    (tmp_path / "recipe.json").chmod(0o644)
    run = _docker("run", "--rm", "--network", "none", "--read-only", "-v", f"{tmp_path}:/in:ro", built.ref,
                  "run", "--recipe", "/in/recipe.json", "--out", "/tmp/out")  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "feature 'preference'" in run.stderr and "train.method: dpo" in run.stderr
    assert "Traceback" not in run.stderr


def _dpo_project(project: Path, root: Path) -> Path:
    """The tiny project copied, its recipe turned into DPO on preference pairs."""
    copy = root / "project"
    subprocess.run(["cp", "-a", str(project), str(copy)], check=True)
    path = copy / "recipes/tiny/tiny.yaml"
    recipe: dict[str, Any] = yaml.safe_load(path.read_text())
    recipe["name"] = "tiny-dpo"
    recipe["train"]["method"], recipe["data"]["format"] = "dpo", "preference"
    rows = [{"prompt": f"How do I step {i}?", "chosen": f"Desk answer {i}.", "rejected": "No."} for i in range(16)]
    (copy / "recipes/tiny/data/sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path.write_text("# Build: nox -s build -- recipes/tiny/tiny.yaml\n" + yaml.safe_dump(recipe, sort_keys=False))
    return copy


def _layer_names(archive: Path, digest: str) -> list[str]:
    """The paths in one layer of an image archive."""
    with tarfile.open(archive) as outer:
        blob = outer.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert blob is not None
        with tarfile.open(fileobj=io.BytesIO(blob.read())) as layer:
            return layer.getnames()


def test_a_dpo_image_adds_only_the_trl_closure_layers(built: Built, tmp_path: Path) -> None:
    project = _dpo_project(built.project, tmp_path)
    result = build_tiny(project, tmp_path, built.key, "--no-load")
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "build/tiny-dpo-0.0.1/build.json").read_text())
    assert report["features"]["features"] == ["base", "preference"]
    assert report["features"]["fields"] == {"preference": "train.method: dpo"}
    base = {layer["name"]: layer["digest"] for layer in built.report["layers"]}
    dpo = {layer["name"]: layer["digest"] for layer in report["layers"]}
    for name in ("base", "wheels:torch", "wheels", "model", "model-judge", "runtime"):
        assert dpo[name] == base[name], f"layer {name} must be shared with the base image"
    added = sorted(set(dpo) - set(base))
    assert added == ["wheels:pyarrow", "wheels[distill+lm_eval+preference]", "wheels[distill+preference]"]
    trl = _layer_names(Path(report["image"]["tar"]), dpo["wheels[distill+preference]"])
    assert f"{SITE}/trl/__init__.py" in trl
    assert not any("/trl/" in n for n in _layer_names(Path(built.report["image"]["tar"]), base["wheels"]))
