"""Small signed bundles without Docker, for any test that needs one (unit, hostile).

The image is a real OCI archive of two tiny layers written by gapforge's own tar and OCI writers;
the bundle is written by `gapforge.bundle.write.write_bundle` and signed with a fixed Ed25519 key,
so it verifies like a built one. API:

- `signing_key(folder, seed=1)`: a fixed key (same seed, same fingerprint); `pinned(folder, seed)`:
  the operator's `--key` anchor for it.
- `make_source(folder)`: the `BundleSource` a build would hand to the writer.
- `write_signed_bundle(folder, seed=1, key=None)`: a bundle folder, signed (with `key` when given).
- `resign(bundle, key)`: SHA256SUMS rewritten over the files present and signed again (an attacker
  who holds `key`, or a test that changed a file on purpose).
- `release_world(folder)`: a TUF release repository whose build key signed a bundle, released on
  `approved`, its metadata exported into the bundle, and a trust folder initialised with the root.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gapforge.bundle import SIGNATURE, SUMS
from gapforge.bundle.sign import SigningKey, load_private_key, sign
from gapforge.bundle.source import (
    BundleSource,
    DebianPackage,
    FileDigest,
    ImageInfo,
    Layer,
    ModelInfo,
    PythonPackage,
)
from gapforge.bundle.sums import bundle_files, render_sums
from gapforge.bundle.write import write_bundle
from gapforge.oci.image import ImageSpec, build_manifest, write_archive
from gapforge.oci.image import Layer as OciLayer
from gapforge.oci.tar import Entry, write_tar_file
from gapforge.operator.anchor import Anchor

EPOCH = 1735689600
REF = "gapforge/unit-desk:1.2.3"


def signing_key(folder: Path, seed: int = 1) -> SigningKey:
    """A fixed key, so fingerprints (and golden files naming them) never change."""
    private = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return SigningKey(private, folder / f"k{seed}.key")


def pinned(folder: Path, seed: int = 1) -> Anchor:
    """The operator's pinned key (--key): the public half of `signing_key(folder, seed)`."""
    public = signing_key(folder, seed).private.public_key()
    return Anchor("key", (public,), f"--key k{seed}.pub.pem")


def make_image(folder: Path) -> ImageInfo:
    """image.tar in `folder`: two small layers (base, model), a cpu profile label."""
    layers = []
    for name, data in (("base", b"debian" * 5000), ("model", b"weights" * 7000)):
        path = folder / f"{name}.layer.tar"
        written = write_tar_file([Entry(f"{name}.bin", "file", data=data)], path, EPOCH)
        layers.append(OciLayer(name, written.digest, written.size, path))
    labels = {"org.opencontainers.image.title": "unit-desk", "io.gapforge.profile": "cpu"}
    spec = ImageSpec(
        entrypoint=["/bin/runtime"], user="1000:1000", labels=labels, source_date_epoch=EPOCH
    )
    manifest = build_manifest(spec, layers, REF)
    tar = folder / "image.tar"
    write_archive(manifest, layers, tar, EPOCH)
    return ImageInfo(REF, tar, manifest.manifest_digest, manifest.config_digest,
                     tuple(Layer(x.name, x.digest, x.size) for x in layers), labels, "cpu",
                     hashlib.sha256(tar.read_bytes()).hexdigest())  # fmt: skip


def evidence(image: ImageInfo) -> dict[str, object]:
    """A passing pretest's evidence, bound to `image`."""
    return {
        "schema": "gapforge/pretest/v1", "passed": True, "verdict": "PASS", "exit_status": 0, "seconds": 12.5,
        "image": {"ref": image.ref, "manifest_digest": image.manifest_digest, "config_digest": image.config_digest},
        "steps": {"data": 1.0, "train": 4.5, "merge": 0.5, "quantize": 5.0, "eval": 1.5},
        "gates": [{"name": "require_improvement", "passed": True, "detail": "merged test loss 5.9 must be below base 6.2"},
                  {"name": "max_perplexity_delta_pct[gguf:q8_0]", "passed": True, "detail": "q8_0 +0.1% (limit 1.0%)"}],
        "outputs": {"gguf:q8_0": {"sha256": "e" * 64, "size": 1000}},
    }  # fmt: skip


def make_source(folder: Path) -> BundleSource:
    """What a build hands the bundle writer, for a tiny synthetic image written into `folder`."""
    image = make_image(folder)
    pretest = folder / "pretest"
    pretest.mkdir()
    (pretest / "evidence.json").write_text(json.dumps(evidence(image), indent=2))
    (pretest / "log.txt").write_text("[data] starting\nverdict: PASS\n")
    (pretest / "report.md").write_text("# report\n")
    wheel = folder / "gapforge-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK fake wheel")
    recipe = {"name": "unit-desk", "version": "1.2.3", "data": {"format": "chat", "sample": "data/sample.jsonl"},
              "quantize": ["gguf:q8_0", "gguf:q4_k_m"]}  # fmt: skip
    return BundleSource(
        name="unit-desk", version="1.2.3", description="A unit-test desk model.", image=image,
        recipe_path="recipes/unit/desk.yaml",
        recipe_files={"recipe.yaml": b"name: unit-desk\n", "recipe.json": json.dumps(recipe).encode(),
                      "data/sample.jsonl": b'{"messages": []}\n', "locks/cpu.txt": b"torch==2.13.0\n"},
        locks={"cpu.txt": "1" * 64, "cpu.debian.lock": "2" * 64, "models/unit-model.json": "3" * 64},
        python_packages=(
            PythonPackage("torch", "2.13.0+cpu", FileDigest("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", "4" * 64, 10)),
            PythonPackage("llama-cpp-python", "0.3.36", FileDigest("llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl", "5" * 64, 9),
                          FileDigest("llama_cpp_python-0.3.36.tar.gz", "6" * 64, 8)),
        ),
        debian_suite="bookworm",
        debian_packages=(DebianPackage("bash", "5.2.15-2+b13", "amd64", "7" * 64),
                         DebianPackage("python3.11-minimal", "3.11.2-6+deb12u6", "amd64", "8" * 64)),
        model=ModelInfo("unit-model", {"type": "hf", "repo": "org/unit-model", "revision": "9" * 40},
                        files=(FileDigest("config.json", "a" * 64, 400), FileDigest("model.safetensors", "b" * 64, 9000)),
                        locked=(FileDigest("model.safetensors", "b" * 64, 9000),)),
        runtime=PythonPackage("gapforge-runtime", "0.1.0", FileDigest("gapforge_runtime-0.1.0-py3-none-any.whl", "c" * 64, 7)),
        llama_cpp=FileDigest("llama_cpp_python-0.3.36.tar.gz", "6" * 64, 8),
        builder_version="0.1.0", source_date_epoch=EPOCH, pretest_dir=pretest, operator_wheels=(wheel,),
        git={"commit": "d" * 40, "dirty": "false"}, started="2026-01-01T00:00:00Z", finished="2026-01-01T00:05:00Z",
    )  # fmt: skip


def write_signed_bundle(folder: Path, seed: int = 1, key: SigningKey | None = None) -> Path:
    """A complete signed bundle under `folder/dist/` (its inputs under `folder/src/`)."""
    src = folder / "src"
    src.mkdir(parents=True, exist_ok=True)
    return write_bundle(make_source(src), key or signing_key(folder, seed), folder / "dist")


def resign(bundle: Path, key: SigningKey) -> None:
    """SHA256SUMS over every file now present (but itself and its signature, and release/), signed
    with `key`: what an attacker holding `key` would write."""
    names = [n for n in bundle_files(bundle) if n not in (SUMS, SIGNATURE)]
    names = [n for n in names if not n.startswith("release/")]
    digests = {n: hashlib.sha256((bundle / n).read_bytes()).hexdigest() for n in names}
    (bundle / SUMS).write_bytes(render_sums(digests))
    (bundle / SIGNATURE).write_bytes(sign(key, (bundle / SUMS).read_bytes()))


@dataclass(frozen=True)
class ReleaseWorld:
    """A release repository, a bundle it released on `approved` (its metadata exported into the
    bundle's release/metadata/), and a site's trust folder that pinned the repository's root."""

    repo_metadata: Path
    root_json: Path
    build_key: SigningKey
    bundle: Path
    trust: Path


def release_world(folder: Path) -> ReleaseWorld:
    """Build the world above under `folder`; point $GAPFORGE_TRUST_DIR at `.trust` to use it."""
    from gapforge.operator.tuf_client import trust_init
    from gapforge.release_manager.create import init_repository
    from gapforge.release_manager.maintenance import export
    from gapforge.release_manager.releases import add_bundle, promote

    repo = init_repository(folder / "repo").repository
    build_key = load_private_key(repo.keys_dir / "build.key")
    bundle = write_signed_bundle(folder / "build", key=build_key)
    add_bundle(repo, bundle)
    promote(repo, "unit-desk-1.2.3", [])
    export(repo, bundle)
    trust = folder / "trust"
    trust_init(repo.metadata_dir / "root.json", trust=trust)
    return ReleaseWorld(
        repo.metadata_dir, repo.metadata_dir / "root.json", build_key, bundle, trust
    )
