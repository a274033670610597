"""`gapforge diff` on small fake bundles with the real layout (bundle.json, recipe/, locks, SBOM,
pretest evidence, SHA256SUMS, an OCI image.tar whose model layer holds a hand-written .safetensors
file), and on the real bundle diffed with itself when one is built."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import struct
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gapforge.bundle.source import BundleSource
from gapforge.bundle.write import write_bundle
from gapforge.commands.diff import cmd_diff, diff_arguments
from gapforge.errors import BundleError
from gapforge.operator.anchor import NoTrustAnchor
from gapforge.operator.gate import NotVerified
from gapforge.release_manager.diff import (
    compare_bundles,
    diff_json,
    render_markdown,
    render_text,
    tensor_digests,
)
from gapforge.release_manager.diff.read import parse_debian_lock, parse_pip_lock
from tests.unit.test_bundle import _key, source  # noqa: F401 (fixture)

PYTHON = {"numpy": "2.4.6", "peft": "0.21.2", "torch": "2.13.0"}
DEBIAN = {"bash": "5.2.15-2+b13", "libc6": "2.36-9+deb12u10", "zlib1g": "1:1.2.13.dfsg-1+deb12u1"}
TENSORS = {
    "model.embed.weight": ("F32", [2, 3], bytes(range(24))),
    "model.head.weight": ("F32", [3], b"\x01" * 12),
    "model.norm.weight": ("F16", [4], b"\x02" * 8),
}


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]]) -> bytes:
    """A .safetensors file written by hand: u64 header length, JSON header, the tensors' bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_image(path: Path, layers: dict[str, bytes]) -> tuple[list[dict[str, Any]], str, str]:
    """image.tar in OCI-layout form (+ docker manifest.json); returns bundle.json's layers and the
    manifest and config digests."""
    digests = [f"sha256:{sha256(data)}" for data in layers.values()]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": digests}}).encode()
    manifest = json.dumps(
        {
            "config": {"digest": f"sha256:{sha256(config)}", "size": len(config)},
            "layers": [
                {"digest": d, "size": len(x)} for d, x in zip(digests, layers.values(), strict=True)
            ],
        }
    ).encode()
    index = json.dumps({"manifests": [{"digest": f"sha256:{sha256(manifest)}"}]}).encode()
    members = {f"blobs/sha256/{sha256(x)}": x for x in (*layers.values(), config, manifest)}
    members["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    members["index.json"] = index
    members["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{sha256(config)}",
                "Layers": [f"blobs/sha256/{d[7:]}" for d in digests],
            }
        ]
    ).encode()
    path.write_bytes(tar_bytes(members))
    listed = [
        {"name": name, "digest": d, "size": len(x)}
        for (name, x), d in zip(layers.items(), digests, strict=True)
    ]
    return listed, f"sha256:{sha256(manifest)}", f"sha256:{sha256(config)}"


def make_bundle(
    root: Path,
    *,
    version: str = "0.1.0",
    learning_rate: float = 0.0002,
    python: dict[str, str] | None = None,
    tensors: dict[str, tuple[str, list[int], bytes]] | None = None,
    config_json: bytes = b'{"hidden_size": 64}',
    loss: float = 2.5,
    sbom: bool = True,
) -> Path:
    """A fake bundle with the real layout in `root`."""
    python = PYTHON if python is None else python
    model_files = {
        "model.safetensors": safetensors_bytes(TENSORS if tensors is None else tensors),
        "config.json": config_json,
    }
    root.mkdir(parents=True)
    layers = {
        "base": tar_bytes({"etc/os-release": b"Debian 12\n"}),
        "model": tar_bytes({f"opt/gapforge/model/{n}": data for n, data in model_files.items()}),
    }
    image_layers, manifest, config = write_image(root / "image.tar", layers)
    recipe = {
        "name": "desk",
        "version": version,
        "quantize": ["gguf:q8_0"],
        "train": {"learning_rate": learning_rate, "method": "lora", "max_steps": 24},
    }
    files: dict[str, bytes] = {
        "recipe/recipe.json": json.dumps(recipe, indent=2).encode(),
        "recipe/locks/cpu.txt": "".join(
            f"{n}=={v} \\\n    --hash=sha256:{'0' * 64}\n    # via -r requirements.in\n"
            for n, v in python.items()
        ).encode(),
        "recipe/locks/cpu.debian.lock": (
            "# Debian packages\n"
            + "".join(
                f"{n} {v} amd64 {'1' * 64} 100 debian/pool/{n}.deb\n" for n, v in DEBIAN.items()
            )
        ).encode(),
        "recipe/locks/models/tiny.json": json.dumps(
            {
                "files": [
                    {
                        "path": "model.safetensors",
                        "sha256": sha256(model_files["model.safetensors"]),
                    }
                ]
            }
        ).encode(),
        "pretest/evidence.json": json.dumps(
            {
                "verdict": "PASS",
                "passed": True,
                "seconds": 80.0,
                "gates": [
                    {"name": "require_improvement", "passed": True, "value": loss, "limit": 4.3}
                ],
                "deltas_vs_merged_pct": {"gguf:q8_0": 0.3},
                "models": {"merged": {"loss": loss, "perplexity": 12.0}},
            }
        ).encode(),
        "wheels/gapforge-0.1.0-py3-none-any.whl": b"wheel",
    }
    if sbom:
        components: list[dict[str, Any]] = [
            {"type": "library", "name": n, "version": v, "purl": f"pkg:pypi/{n}@{v}"}
            for n, v in python.items()
        ]
        components += [
            {
                "type": "library",
                "name": n,
                "version": v,
                "purl": f"pkg:deb/debian/{n}@{v}?arch=amd64",
            }
            for n, v in DEBIAN.items()
        ]
        components.append(
            {
                "type": "machine-learning-model",
                "name": "tiny",
                "components": [
                    {
                        "type": "file",
                        "name": n,
                        "hashes": [{"alg": "SHA-256", "content": sha256(data)}],
                        "properties": [{"name": "gapforge:size", "value": str(len(data))}],
                    }
                    for n, data in model_files.items()
                ],
            }
        )
        files["sbom.cdx.json"] = json.dumps({"components": components}).encode()
    index = {
        "schema": "gapforge/bundle/v1",
        "name": "desk",
        "version": version,
        "image": {"layers": image_layers, "manifest_digest": manifest, "config_digest": config},
        "model": {"id": "tiny", "revision": "r1"},
        "packages": {"python": len(python), "debian": len(DEBIAN)},
        "locks": {"cpu.txt": "x", "cpu.debian.lock": "x", "models/tiny.json": "x"},
    }
    files["bundle.json"] = json.dumps(index).encode()
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    files["image.tar"] = (root / "image.tar").read_bytes()
    sums = "".join(f"{sha256(files[n])}  {n}\n" for n in sorted(files))
    (root / "SHA256SUMS").write_text(sums)
    (root / "SHA256SUMS.sig").write_bytes(sha256(sums.encode()).encode()[:64])
    return root


# --- safetensors -----------------------------------------------------------------------------------


def test_tensor_digests_reads_each_tensor_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(TENSORS))
    with path.open("rb") as stream:
        digests = tensor_digests(stream, path.stat().st_size)
    assert sorted(digests) == sorted(TENSORS)
    embed = digests["model.embed.weight"]
    assert (embed.dtype, embed.shape, embed.size) == ("F32", (2, 3), 24)
    assert embed.sha256 == sha256(bytes(range(24)))
    assert embed.describe() == "F32[2, 3]"


def _framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 1000) + b"{}", "does not fit"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (
            _framed(b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 9]}}'),
            "data_offsets",
        ),
    ],
)
def test_tensor_digests_names_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tensor_digests(io.BytesIO(data), len(data))


# --- the diff --------------------------------------------------------------------------------------


def test_identical_bundles_report_no_changes(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    diff = compare_bundles(a, b)
    assert diff.unchanged
    assert diff.transfer.total == 0
    text = render_text(diff)
    for title in (
        "Recipe and hyper-parameters",
        "Python packages",
        "Debian packages",
        "Model",
        "Layers",
    ):
        assert f"{title}: unchanged" in text
    assert "Pretest and evaluation: unchanged" in text
    assert "not verified" in text and "gapforge verify" in text
    data = diff_json(diff)
    assert data["unchanged"] is True and data["transfer"]["total_bytes"] == 0
    assert data["layers"]["new"] == [] and len(data["layers"]["shared"]) == 2
    assert "Unchanged." in render_markdown(diff)


def test_changed_learning_rate(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a", learning_rate=0.0002)
    b = make_bundle(tmp_path / "b", learning_rate=0.0001)
    diff = compare_bundles(a, b)
    assert diff.recipe.keys.changed == {"train.learning_rate": (0.0002, 0.0001)}
    assert not diff.recipe.keys.added and not diff.recipe.keys.removed
    assert "  train.learning_rate: 0.0002 → 0.0001\n" in render_text(diff)
    assert "| train.learning_rate | 0.0002 | 0.0001 |" in render_markdown(diff)
    assert diff_json(diff)["recipe"]["changed"] == {
        "train.learning_rate": {"a": 0.0002, "b": 0.0001}
    }
    # Only recipe/ and the documents changed: no layer is new, the files that differ must cross.
    assert diff.layers.new == [] and diff.transfer.layer_bytes == 0
    assert "recipe/recipe.json" in diff.transfer.files
    assert diff.transfer.files["recipe/recipe.json"] == (b / "recipe/recipe.json").stat().st_size
    assert {"SHA256SUMS", "SHA256SUMS.sig"} <= set(diff.transfer.files)
    assert "image.tar" not in diff.transfer.files


def test_version_change_is_named(tmp_path: Path) -> None:
    diff = compare_bundles(
        make_bundle(tmp_path / "a"), make_bundle(tmp_path / "b", version="0.2.0")
    )
    assert diff.recipe.version == ("0.1.0", "0.2.0")
    text = render_text(diff)
    assert "bundle version: 0.1.0 → 0.2.0" in text
    assert re.search(r"\n  version: +0\.1\.0 → 0\.2\.0\n", text)  # the recipe key, aligned


def test_bumped_added_and_removed_packages(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    python = {"numpy": "2.4.6", "torch": "2.14.0", "tqdm": "4.70.1"}
    diff = compare_bundles(a, make_bundle(tmp_path / "b", python=python))
    changes = diff.python.changes
    assert changes.changed == {"torch": ("2.13.0", "2.14.0")}
    assert changes.added == {"tqdm": "4.70.1"} and changes.removed == {"peft": "0.21.2"}
    assert diff.python.source == ("sbom.cdx.json", "sbom.cdx.json")
    assert diff.debian.unchanged
    text = render_text(diff)
    assert "torch: 2.13.0 → 2.14.0" in text
    assert "tqdm:  — → 4.70.1" in text and "peft:  0.21.2 → —" in text
    assert "1 changed, 1 added, 1 removed" in text
    assert "| torch | 2.13.0 | 2.14.0 |" in render_markdown(diff)
    assert diff_json(diff)["packages"]["python"]["changed"] == {
        "torch": {"a": "2.13.0", "b": "2.14.0"}
    }


def test_without_an_sbom_the_locks_are_read(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a", sbom=False)
    b = make_bundle(tmp_path / "b", sbom=False, python={**PYTHON, "Torch": "2.14.0"})
    diff = compare_bundles(a, b)
    assert diff.python.source == ("recipe/locks/cpu.txt", "recipe/locks/cpu.txt")
    assert diff.python.changes.changed == {"torch": ("2.13.0", "2.14.0")}
    assert diff.debian.source == ("recipe/locks/cpu.debian.lock",) * 2
    assert diff.debian.count == (3, 3)
    assert any("sbom.cdx.json: missing" in note for note in diff.notes)


def test_changed_tensor_is_named_and_the_others_are_not(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    tensors = dict(TENSORS)
    tensors["model.head.weight"] = ("F32", [3], b"\x03" * 12)
    tensors["model.extra.bias"] = ("BF16", [2], b"\x00" * 4)
    del tensors["model.norm.weight"]
    b = make_bundle(tmp_path / "b", tensors=tensors)
    diff = compare_bundles(a, b)
    assert list(diff.model.files.changed) == ["model.safetensors"]
    [changes] = diff.model.tensors
    assert changes.file == "model.safetensors" and not changes.skipped
    assert list(changes.changed) == ["model.head.weight"]
    assert list(changes.added) == ["model.extra.bias"] and list(changes.removed) == [
        "model.norm.weight"
    ]
    assert changes.same == 1
    text = render_text(diff)
    assert "model.head.weight" in text and "model.embed.weight" not in text
    assert "model.safetensors: tensors 1 changed, 1 added, 1 removed, 1 unchanged" in text
    assert "BF16[2]" in text
    tensor_json = diff_json(diff)["model"]["tensors"][0]
    assert tensor_json["changed"]["model.head.weight"]["b"]["sha256"] == sha256(b"\x03" * 12)
    assert "### model.safetensors" in render_markdown(diff)


def test_new_layer_bytes_are_the_new_layers_sizes(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    b = make_bundle(
        tmp_path / "b", tensors={**TENSORS, "model.head.weight": ("F32", [3], b"\x07" * 12)}
    )
    diff = compare_bundles(a, b)
    index = json.loads((b / "bundle.json").read_text())
    model_layer = next(x for x in index["image"]["layers"] if x["name"] == "model")
    assert [x.name for x in diff.layers.new] == ["model"]
    assert [x.name for x in diff.layers.shared] == ["base"]
    assert [x.name for x in diff.layers.dropped] == ["model"]
    assert diff.transfer.layer_bytes == model_layer["size"] == sum(x.size for x in diff.layers.new)
    with tarfile.open(b / "image.tar") as archive:
        layer_blobs = {f"blobs/sha256/{x['digest'][7:]}" for x in index["image"]["layers"]}
        metadata = sum(
            m.size for m in archive.getmembers() if m.isfile() and m.name not in layer_blobs
        )
    assert diff.transfer.image_metadata_bytes == metadata
    assert diff.transfer.total == model_layer["size"] + metadata + sum(diff.transfer.files.values())
    text = render_text(diff)
    assert f"({model_layer['size']:,} bytes)" in text
    assert "total to cross the gap:" in text


def test_changed_non_safetensors_file_is_skipped_saying_why(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    b = make_bundle(tmp_path / "b", config_json=b'{"hidden_size": 128}')
    [changes] = compare_bundles(a, b).model.tensors
    assert changes.file == "config.json"
    assert changes.skipped.startswith("not safetensors")


def test_pretest_figures_side_by_side(tmp_path: Path) -> None:
    diff = compare_bundles(
        make_bundle(tmp_path / "a", loss=2.5), make_bundle(tmp_path / "b", loss=2.0)
    )
    changed = {f.label: (f.a, f.b) for f in diff.pretest.figures if not f.same}
    assert changed == {
        "gate[require_improvement].value": (2.5, 2.0),
        "model[merged].loss": (2.5, 2.0),
    }
    assert "model[merged].loss                2.5   2     -0.5 (-20.0%)" in render_text(diff)


def test_not_a_bundle_is_an_error_that_names_it(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"empty: not a bundle .*dist/<name>-<version>/"):
        compare_bundles(a, tmp_path / "empty")


def test_unreadable_recipe_json_names_the_file(tmp_path: Path) -> None:
    a = make_bundle(tmp_path / "a")
    b = make_bundle(tmp_path / "b")
    (b / "recipe/recipe.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"b/recipe/recipe.json: unreadable \(JSONDecodeError"):
        compare_bundles(a, b)


def test_lock_parsers() -> None:
    lock = "# header\nCharset_Normalizer==3.5.2 \\\n    --hash=sha256:00\nuvicorn[standard]==0.30.0 ; python_version > '3'\n"
    assert parse_pip_lock(lock) == {"charset-normalizer": "3.5.2", "uvicorn": "0.30.0"}
    assert parse_debian_lock("# c\nbash 5.2 amd64 ab 1 p\n") == {"bash": "5.2"}


# --- the command -----------------------------------------------------------------------------------


def _args(*words: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    diff_arguments(parser)
    return parser.parse_args(list(words))


def signed_bundle(desk: BundleSource, root: Path, learning_rate: float) -> Path:
    """A real, signed bundle (tests/unit/test_bundle's synthetic one) named desk 0.1.0 with this
    learning rate: what the trust gate of 'gapforge diff' proves before anything is compared."""
    recipe = {"name": "desk", "version": "0.1.0", "train": {"learning_rate": learning_rate}}
    files = {**desk.recipe_files, "recipe.json": json.dumps(recipe).encode()}
    changed = replace(desk, name="desk", version="0.1.0", recipe_files=files)
    return write_bundle(changed, _key(root.parent), root)


def test_cmd_diff_writes_json_atomically_and_exits_0(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    source: BundleSource,  # noqa: F811 (the imported fixture)
) -> None:
    a = signed_bundle(source, tmp_path / "a", 0.0002)
    b = signed_bundle(source, tmp_path / "b", 0.0001)
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(_key(tmp_path).public_pem)
    key = ("--key", str(pub))
    out = tmp_path / "diff.json"
    assert cmd_diff(_args(str(a), str(b), "--json", "--out", str(out), *key)) == 0
    assert json.loads(out.read_text())["recipe"]["changed"]["train.learning_rate"] == {
        "a": 0.0002,
        "b": 0.0001,
    }
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert capsys.readouterr().out == ""
    assert cmd_diff(_args(str(a), str(b), "--markdown", *key)) == 0
    assert capsys.readouterr().out.startswith("# Changes from desk 0.1.0 to desk 0.1.0")
    assert cmd_diff(_args(str(a), str(a), *key)) == 0
    assert "Recipe and hyper-parameters: unchanged" in capsys.readouterr().out


def test_cmd_diff_verifies_both_bundles_first(
    tmp_path: Path,
    source: BundleSource,  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "no-trust"))
    a = signed_bundle(source, tmp_path / "a", 0.0002)
    unsigned = make_bundle(tmp_path / "b")
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(_key(tmp_path).public_pem)
    with pytest.raises(NotVerified, match="not verified, so 'gapforge diff' will not act on it"):
        cmd_diff(_args(str(a), str(unsigned), "--key", str(pub)))
    with pytest.raises(NoTrustAnchor, match="'gapforge diff' needs a trust anchor"):
        cmd_diff(_args(str(a), str(a)))
