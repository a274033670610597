"""sbom.cdx.json: CycloneDX 1.6 (cyclonedx-python-lib) of one sealed image.

The image is the BOM's subject (a container known by its manifest digest); under it: every locked
Python package with the sha256 of the wheel installed, every Debian package of the base with its
.deb's sha256, the model (a machine-learning-model component whose sub-components are its files),
the runtime and llama.cpp's conversion scripts. Serial number and timestamp derive from the image
digest and SOURCE_DATE_EPOCH, so the same image always gets the same SBOM bytes.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from gapforge.bundle.source import BundleSource, FileDigest, ModelInfo, PythonPackage
from gapforge.profile import FEATURES_LABEL

PROPERTY_CONFIG = "gapforge:image:config_digest"
PROPERTY_MANIFEST = "gapforge:image:manifest_digest"
SBOM_NAMESPACE = uuid.UUID("6f1c3a52-3c4e-4a53-9a43-6b0d7d9c5f11")


def _sha256(hexdigest: str) -> HashType:
    return HashType(alg=HashAlgorithm.SHA_256, content=hexdigest.removeprefix("sha256:"))


def _python_component(package: PythonPackage) -> Component:
    properties = [Property(name="gapforge:wheel", value=package.file.name)]
    if package.feature:
        properties.append(Property(name="gapforge:feature", value=package.feature))
    if package.sdist is not None:
        properties += [
            Property(name="gapforge:built_from_sdist", value=package.sdist.name),
            Property(name="gapforge:sdist_sha256", value=package.sdist.sha256),
        ]
    return Component(
        type=ComponentType.LIBRARY,
        name=package.name,
        version=package.version,
        bom_ref=f"pypi:{package.name}@{package.version}",
        purl=PackageURL("pypi", name=package.name.lower(), version=package.version),
        hashes=[_sha256(package.file.sha256)],
        properties=properties,
    )


def _debian_components(source: BundleSource) -> list[Component]:
    components = []
    for package in source.debian_packages:
        purl = PackageURL(
            "deb", "debian", package.name, package.version,
            {"arch": package.architecture, "distro": source.debian_suite},
        )  # fmt: skip
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=package.name,
                version=package.version,
                bom_ref=f"deb:{package.name}@{package.version}",
                purl=purl,
                hashes=[_sha256(package.sha256)],
            )
        )
    return components


def _file_component(file: FileDigest, prefix: str) -> Component:
    return Component(
        type=ComponentType.FILE,
        name=file.name,
        bom_ref=f"{prefix}:{file.name}",
        hashes=[_sha256(file.sha256)],
        properties=[Property(name="gapforge:size", value=str(file.size))],
    )


def _model_component(model: ModelInfo, name: str | None = None) -> Component:
    source = model.source
    properties = [
        Property(name=f"gapforge:source:{k}", value=str(v)) for k, v in sorted(source.items())
    ]
    properties += [
        Property(name="gapforge:locked_file", value=f"{f.name} sha256:{f.sha256}")
        for f in model.locked
    ]
    references = []
    if source.get("type") == "hf":
        url = f"https://huggingface.co/{source['repo']}/tree/{source['revision']}"
        references.append(
            ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url))
        )
    elif source.get("type") == "gguf":
        name, _, version = str(source["package"]).partition("==")
        url = f"https://pypi.org/project/{name}/{version}/"
        references.append(
            ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url))
        )
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=model.id,
        version=model.revision,
        bom_ref=f"model:{model.id}",
        description=(
            f"base model weights in /opt/gapforge/model ({len(model.files)} files)"
            if name is None
            else f"the recipe's {name} model in /opt/gapforge/models/{name} ({len(model.files)} files)"
        ),
        components=[_file_component(f, f"model:{model.id}") for f in model.files],
        properties=properties,
        external_references=references,
    )


def _runtime_components(source: BundleSource) -> list[Component]:
    runtime = source.runtime
    llama = source.llama_cpp
    return [
        Component(
            type=ComponentType.APPLICATION,
            name=runtime.name,
            version=runtime.version,
            bom_ref=f"runtime:{runtime.name}@{runtime.version}",
            description="the image's entrypoint: data → train → merge → quantize → evaluate",
            hashes=[_sha256(runtime.file.sha256)],
            properties=[Property(name="gapforge:wheel", value=runtime.file.name)],
        ),
        Component(
            type=ComponentType.APPLICATION,
            name="llama.cpp-conversion-scripts",
            version=llama.name.removesuffix(".tar.gz").rsplit("-", 1)[-1],
            bom_ref="runtime:llama.cpp-scripts",
            description=f"convert_hf_to_gguf.py and gguf-py from the locked sdist {llama.name}",
            hashes=[_sha256(llama.sha256)],
        ),
    ]


def build_bom(source: BundleSource) -> Bom:
    image = source.image
    repository = image.ref.rsplit(":", 1)[0]
    subject = Component(
        type=ComponentType.CONTAINER,
        name=repository,
        version=source.version,
        bom_ref="image",
        description=source.description,
        purl=PackageURL(
            "oci",
            name=repository.rsplit("/", 1)[-1],
            version=image.manifest_digest,
            qualifiers={"tag": source.version},
        ),
        hashes=[_sha256(image.manifest_digest)],
        properties=[
            Property(name=PROPERTY_MANIFEST, value=image.manifest_digest),
            Property(name=PROPERTY_CONFIG, value=image.config_digest),
            Property(name="gapforge:profile", value=image.profile),
            Property(name="gapforge:features", value=image.labels.get(FEATURES_LABEL, "base")),
            *(
                Property(name=f"gapforge:lock:{k}", value=v)
                for k, v in sorted(source.locks.items())
            ),
        ],
    )
    tool = Component(
        type=ComponentType.APPLICATION, name="gapforge", version=source.builder_version
    )
    python = [_python_component(p) for p in source.python_packages]
    debian = _debian_components(source)
    model = _model_component(source.model)
    extras = [_model_component(m, name) for name, m in source.extra_models]
    runtime = _runtime_components(source)
    bom = Bom(
        serial_number=uuid.uuid5(SBOM_NAMESPACE, image.manifest_digest),
        metadata=BomMetaData(
            component=subject,
            tools=ToolRepository(components=[tool]),
            timestamp=datetime.fromtimestamp(source.source_date_epoch, tz=UTC),
        ),
        components=[*python, *debian, model, *extras, *runtime],
    )
    bom.register_dependency(subject, [*python, *debian, model, *extras, *runtime])
    return bom


def render_sbom(source: BundleSource) -> bytes:
    """The SBOM as CycloneDX 1.6 JSON, validated against the 1.6 schema before it is returned."""
    text = JsonV1Dot6(build_bom(source)).output_as_string(indent=2)
    problem = validate_sbom(text)
    if problem:
        raise ValueError(f"the SBOM does not validate against CycloneDX 1.6: {problem}")
    return text.encode() + b"\n"


def validate_sbom(text: str) -> str:
    """'' if `text` is valid CycloneDX 1.6 JSON, else the validator's message."""
    # Imported here: the validator's format checkers take a second or two to import.
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return "" if error is None else str(error)[:500]


def image_digests(sbom: dict[str, Any]) -> tuple[str, str]:
    """(manifest digest, config digest) the SBOM names for its subject image."""
    properties = {
        p.get("name"): p.get("value")
        for p in sbom.get("metadata", {}).get("component", {}).get("properties", [])
    }
    return str(properties.get(PROPERTY_MANIFEST, "")), str(properties.get(PROPERTY_CONFIG, ""))


def summary(sbom: dict[str, Any]) -> dict[str, int]:
    """How many components of each kind (for `inspect`)."""
    counts: dict[str, int] = {}
    for component in sbom.get("components", []):
        ref = str(component.get("bom-ref", ""))
        kind = ref.split(":", 1)[0] if ":" in ref else component.get("type", "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def feature_wheels(sbom: dict[str, Any]) -> dict[str, Any]:
    """The image's feature sets and its Python wheels by feature group (for `inspect`)."""
    subject = sbom.get("metadata", {}).get("component", {})
    sets = next(
        (str(p.get("value", "")) for p in subject.get("properties", [])
         if p.get("name") == "gapforge:features"),
        "",
    )  # fmt: skip
    wheels: dict[str, list[str]] = {}
    for component in sbom.get("components", []):
        if not str(component.get("bom-ref", "")).startswith("pypi:"):
            continue
        props = {p.get("name"): p.get("value") for p in component.get("properties", [])}
        group = str(props.get("gapforge:feature") or "base")
        wheels.setdefault(group, []).append(f"{component.get('name')}=={component.get('version')}")
    return {"sets": [s for s in sets.split(",") if s], "wheels": dict(sorted(wheels.items()))}
