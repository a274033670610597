"""Feature sets select wheels: the closure of each feature through the lock's `# via` graph, groups
that name layers independently of the recipe, and the recipe check that refuses a feature its
profile does not offer."""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from pathlib import Path

import pytest
from gapforge_runtime.features import FEATURES, recipe_features
from gapforge_runtime.recipe_schema import Recipe

from gapforge.errors import LockError, RecipeError
from gapforge.image import plan_wheel_layers
from gapforge.lock.features import dependency_graph, select_features
from gapforge.lock.python import parse_python_lock
from gapforge.profile import REPO_ROOT, load_profile
from gapforge.recipe import load_recipe

HASH = "--hash=sha256:" + "0" * 64
DEFAULT = REPO_ROOT / "recipes/smollm2/lora-q8-q4.yaml"


def _lock(tmp_path: Path, pins: dict[str, list[str]]) -> Path:
    """A pip-compile style lock: each pin with the parents its `# via` lines name."""
    lines = ["# gapforge-inputs-sha256: " + "1" * 64]
    for name, parents in pins.items():
        lines += [f"{name}==1.0 \\", f"    {HASH}"]
        lines += ["    # via"] + [f"    #   {p}" for p in parents]
    path = tmp_path / "cpu.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


PINS = {
    "torch": ["-r requirements.in"],
    "numpy": ["-r requirements.in", "pandas", "torch"],
    "trl": ["-r requirements.in"],
    "datasets": ["lm-eval", "trl"],
    "pandas": ["datasets"],
    "lm-eval": ["-r requirements.in"],
    "sacrebleu": ["lm-eval"],
}
DECLARED = {"preference": ("trl",), "lm_eval": ("lm-eval",)}


def test_groups_follow_the_features_that_need_a_wheel_not_the_recipe(tmp_path: Path) -> None:
    lock = parse_python_lock(_lock(tmp_path, PINS))
    graph = dependency_graph(lock)
    assert graph.roots == {"torch", "numpy", "trl", "lm-eval"}
    assert graph.closure({"trl"}) == {"trl", "datasets", "pandas", "numpy"}
    base = select_features(DECLARED, lock, {}, "p")
    assert base.groups == {"base": ("numpy", "torch")} and base.label == "base"
    dpo = select_features(DECLARED, lock, {"preference": "train.method: dpo"}, "p")
    # datasets and pandas serve lm_eval too: their group names both, in a DPO image as in an
    # lm-eval one, so the two share that layer; trl is the preference closure's own
    assert dpo.groups == {"base": ("numpy", "torch"), "lm_eval+preference": ("datasets", "pandas"),
                          "preference": ("trl",)}  # fmt: skip
    both = select_features(DECLARED, lock, {"preference": "a", "lm_eval": "b"}, "p")
    assert both.groups["lm_eval+preference"] == dpo.groups["lm_eval+preference"]
    assert both.groups["lm_eval"] == ("lm-eval", "sacrebleu")
    assert dpo.record(lock)["wheels"]["preference"] == ["trl==1.0"]


def test_a_lock_without_its_graph_or_a_table_naming_strangers_is_refused(tmp_path: Path) -> None:
    path = _lock(tmp_path, PINS)
    path.write_text(path.read_text().replace("    #   lm-eval\n", "", 1).replace("    # via\n", "", 1))
    with pytest.raises(LockError, match="no '# via' line for torch"):
        dependency_graph(parse_python_lock(path))
    lock = parse_python_lock(_lock(tmp_path, PINS))
    with pytest.raises(LockError, match=r"names rlhf, not a feature.*lists optuna, not a root"):
        select_features({"rlhf": ("trl",), "sweep": ("optuna",)}, lock, {}, "p")
    with pytest.raises(LockError, match=r"needs feature.*sweep from sweep"):
        select_features(DECLARED, lock, {"sweep": "sweep"}, "p")


def _recipe(**changes: object) -> Recipe:
    raw = load_recipe(DEFAULT).raw
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return Recipe.model_validate(raw)


def test_each_feature_comes_from_its_recipe_field() -> None:
    assert recipe_features(_recipe()) == {}
    assert recipe_features(_recipe(train__method="dpo", data__format="preference")) == {
        "preference": "train.method: dpo"
    }
    assert set(recipe_features(_recipe(sweep={"space": {"lora.r": {"choices": [4, 8]}}}))) == {"sweep"}
    assert set(recipe_features(_recipe(evaluate__lm_eval={"tasks": "tasks"}))) == {"lm_eval"}
    assert set(recipe_features(_recipe(data__pii={"presidio": True}))) == {"ner"}
    assert recipe_features(_recipe(data__pii={"enabled": False})) == {}
    assert set(FEATURES) == set(load_profile("cpu").features) == set(load_profile("cuda").features)


def test_the_real_cpu_lock_keeps_extras_out_of_the_default_image() -> None:
    profile = load_profile("cpu")
    lock = parse_python_lock(REPO_ROOT / "lockfiles/cpu.txt")
    default = select_features(profile.features, lock, recipe_features(_recipe()), "cpu")
    assert default.label == "base"
    for extra in ("trl", "optuna", "lm-eval", "spacy", "presidio-analyzer", "datasets", "pyarrow"):
        assert extra not in default.packages, extra
    assert {"torch", "transformers", "peft", "llama-cpp-python", "datasketch", "mlflow-skinny"} <= default.packages
    dpo_recipe = _recipe(train__method="dpo", data__format="preference")
    dpo = select_features(profile.features, lock, recipe_features(dpo_recipe), "cpu")
    assert dpo.groups["base"] == default.groups["base"]
    assert "trl" in dpo.groups["distill+preference"]
    lr = select_features(profile.features, lock, recipe_features(_recipe(train__learning_rate=1e-3)), "cpu")
    assert lr == default


def _wheel(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True)
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", b"")
    return path


def test_adding_a_feature_adds_layers_and_keeps_every_other_layer_key(tmp_path: Path) -> None:
    profile = load_profile("cpu")
    wheels = {n: _wheel(tmp_path / n, n) for n in ("numpy", "torch", "trl", "datasets")}
    base_groups = {"numpy": "base", "torch": "base"}
    base = plan_wheel_layers(profile, {k: wheels[k] for k in base_groups}, base_groups)
    dpo_groups = {**base_groups, "trl": "preference", "datasets": "lm_eval+preference"}
    dpo = plan_wheel_layers(profile, wheels, dpo_groups)
    assert [p.name for p in base] == ["wheels"]
    assert [p.name for p in dpo] == ["wheels", "wheels[lm_eval+preference]", "wheels[preference]"]
    assert dpo[0].key == base[0].key


def test_the_recipe_check_refuses_a_feature_the_profile_does_not_offer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "repo" / "images"
    shutil.copytree(REPO_ROOT / "images" / "cpu", images / "cpu")
    toml = images / "cpu" / "profile.toml"
    toml.write_text(toml.read_text().replace('preference = ["trl"]\n', ""))
    assert "preference" not in dataclasses.asdict(load_profile("cpu", images))["features"]
    monkeypatch.setattr("gapforge.profile.REPO_ROOT", tmp_path / "repo")
    recipe = tmp_path / "dpo.yaml"
    text = DEFAULT.read_text().replace("format: chat", "format: preference")
    recipe.write_text(text.replace("method: lora", "method: dpo"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data/sample.jsonl").write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    text = str(caught.value)
    assert "train.method" in text and "feature set 'preference'" in text and "profile.toml" in text
