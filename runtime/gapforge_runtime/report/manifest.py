"""manifest.json: every input and output with sha256 and size, the recipe, versions, timings, lineage."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from gapforge_runtime import __version__
from gapforge_runtime.files import describe_path, write_json_atomic
from gapforge_runtime.image_contract import BUNDLE_SUMS_ENV, IMAGE_DIGEST_ENV
from gapforge_runtime.outputs import load_record
from gapforge_runtime.steps.context import RunContext
from gapforge_runtime.steps.quantize import gguf_targets

SCHEMA = "gapforge-runtime/manifest/v1"
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "tokenizers",
    "llama_cpp_python",
    "gguf",
    "numpy",
)
STEPS = ("data", "train", "merge", "quantize", "eval")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the outputs."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _entry(described: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    path = Path(described["path"])
    shown = (
        str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    )
    entry = {"path": shown, "sha256": described["sha256"], "size": described["size"]}
    if "files" in described:
        entry["files"] = described["files"]
    return entry


def _inputs(ctx: RunContext) -> dict[str, Any]:
    """The run's inputs: recipe, model, data (and a continual run's parent and base model)."""
    inputs: dict[str, Any] = {
        "recipe": _entry(describe_path(ctx.recipe.path)),
        "model": _entry(ctx.describe("model", ctx.model_dir)),
        "data": _entry(describe_path(ctx.data_file)),
    }
    for label, path in (("validation", ctx.validation_file), ("test", ctx.test_file)):
        if path is not None:
            inputs[label] = _entry(describe_path(path))
    if ctx.parent is not None:
        parent = ctx.parent.lineage()
        inputs["parent"] = {"path": parent["path"], "sha256": parent["manifest_sha256"]}
        if ctx.base_dir is not None:  # the image's base model, which a continual chain shares
            inputs["base_model"] = _entry(ctx.describe("base", ctx.base_dir))
    return inputs


def _outputs(ctx: RunContext, records: dict[str, Any], root: Path) -> dict[str, Any]:
    """Every output the step records name that is still there, and the training log."""
    outputs: dict[str, Any] = {}
    for record in records.values():
        if record is None:
            continue
        for name, described in record.outputs.items():
            if Path(described["path"]).exists():
                outputs[f"split:{name}" if record.name == "data" else name] = _entry(
                    described, root
                )
    if ctx.out.train_log.is_file():
        outputs["train_log"] = _entry(describe_path(ctx.out.train_log), root)
    return outputs


def _lineage(ctx: RunContext, model_sha256: str, outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each model artefact with the ones it was made from, by digest."""
    lineage = [{"id": "base", "parents": [], "sha256": model_sha256}]
    if ctx.parent is not None:  # a continual run: its starting model is the parent's merged model
        parent = ctx.parent.lineage()
        lineage = [
            {"id": "parent", "parents": [], "sha256": parent["manifest_sha256"], **parent},
            {"id": "base", "parents": ["parent"], "sha256": model_sha256},
        ]
    made_from = {"adapter": ["base"], "merged": ["base", "adapter"]}
    made_from.update(
        {t: ["merged" if t == "gguf:f16" else "gguf:f16"] for t in gguf_targets(ctx.recipe)}
    )
    made_from["adapter:gguf"] = ["adapter"]
    for artefact, parents in made_from.items():
        if artefact in outputs:
            lineage.append(
                {"id": artefact, "parents": parents, "sha256": outputs[artefact]["sha256"]}
            )
    return lineage


def build_manifest(ctx: RunContext) -> dict[str, Any]:
    """The manifest of what the output folder holds now, assembled from the step records."""
    root = ctx.out.root.resolve()
    records = {name: load_record(ctx.out, name) for name in STEPS}
    inputs = _inputs(ctx)
    outputs = _outputs(ctx, records, root)
    lineage = _lineage(ctx, inputs["model"]["sha256"], outputs)
    evaluation = None
    if ctx.out.evaluation.is_file():
        evaluation = json.loads(ctx.out.evaluation.read_text(encoding="utf-8"))
    manifest = {
        "schema": SCHEMA,
        "runtime": {
            "version": __version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "libraries": library_versions(),
        "recipe": ctx.recipe.document(),
        "recipe_sha256": ctx.recipe.sha256,
        "inputs": inputs,
        "outputs": outputs,
        "steps": {
            name: {"seconds": r.seconds, "inputs": r.inputs}
            for name, r in records.items()
            if r is not None
        },
        "timings": {name: r.seconds for name, r in records.items() if r is not None},
        "data": records["data"].details if records["data"] else {},
        "training": records["train"].details if records["train"] else {},
        "lineage": lineage,
        "evaluation": evaluation,
        "passed": None if evaluation is None else evaluation["passed"],
    }
    image = sealed_image()
    if image:
        manifest["image"] = image
    return manifest


def sealed_image() -> dict[str, str]:
    """The image this run ran in and the bundle it came from, as `gapforge run` tells the runtime
    (empty when the runtime was started another way)."""
    found = {
        "config_digest": os.environ.get(IMAGE_DIGEST_ENV, ""),
        "bundle_sha256sums": os.environ.get(BUNDLE_SUMS_ENV, ""),
    }
    return {k: v for k, v in found.items() if v}


def add_sweep(ctx: RunContext, manifest: dict[str, Any]) -> None:
    """A sweep's summary, its journal and the trial the shipped adapter came from (none: no change)."""
    summary_file = ctx.out.root / "sweep" / "sweep.json"
    if not summary_file.is_file():
        return
    root = ctx.out.root.resolve()
    manifest["sweep"] = json.loads(summary_file.read_text(encoding="utf-8"))
    manifest["outputs"]["sweep:summary"] = _entry(describe_path(summary_file), root)
    journal = ctx.out.root / "sweep" / "journal.log"
    if journal.is_file():
        manifest["outputs"]["sweep:journal"] = _entry(describe_path(journal), root)
    for node in manifest["lineage"]:
        if node["id"] == "adapter":
            node["sweep_trial"] = manifest["sweep"]["best"]["number"]


def add_distill(ctx: RunContext, manifest: dict[str, Any]) -> None:
    """A distillation's teacher and generated data in the lineage (none: no change)."""
    summary_file = ctx.out.root / "distill" / "distill.json"
    if not summary_file.is_file():
        return
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    manifest["distill"] = summary
    manifest["inputs"]["teacher"] = {"path": summary["teacher"]["path"],
                                     "sha256": summary["teacher"]["sha256"]}  # fmt: skip
    nodes = [{"id": "teacher", "parents": [], "sha256": summary["teacher"]["sha256"]}]
    if summary.get("data"):  # sequence-level: the teacher's answers; GKD learns from its logits
        nodes.append(
            {"id": "teacher_data", "parents": ["teacher"], "sha256": summary["data"]["sha256"]}
        )
    manifest["lineage"][1:1] = nodes
    for node in manifest["lineage"]:
        if node["id"] == "adapter":
            node["parents"] = [*node["parents"], nodes[-1]["id"]]


def write_manifest_and_report(ctx: RunContext) -> dict[str, Any]:
    """Write report.md/.html (and charts), then manifest.json naming them too."""
    from gapforge_runtime.report import write_report

    manifest = build_manifest(ctx)
    add_sweep(ctx, manifest)
    add_distill(ctx, manifest)
    history_file = ctx.out.root / "train_history.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []
    written = write_report(ctx.out.root, manifest, history)
    for name, path in written.items():
        manifest["outputs"][name] = _entry(describe_path(path), ctx.out.root.resolve())
    write_json_atomic(ctx.out.root / "manifest.json", manifest)
    return manifest
