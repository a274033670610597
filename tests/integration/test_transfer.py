"""Across the gap cheaply and safely, with real bundles: the tiny recipe's next release (another
learning rate only) delta'd against the site's signed inventory of the first bundle, rebuilt inside
byte for byte and verified like the full bundle; the bundle split for media with parity, a part
lost and another corrupted, joined, repaired and verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import Built, gapforge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]


def test_a_recipe_only_change_crosses_as_its_recipe_layer_and_under_1_mb(
    built: Built, built_changed: Built, tmp_path: Path
) -> None:
    site = {"GAPFORGE_TRUST_DIR": str(tmp_path / "site-trust")}
    inventory = tmp_path / "inventory.json"
    made = gapforge("inventory", str(built.bundle), "--out", str(inventory), env=site)
    assert made.returncode == 0, made.stderr[-3000:]
    operator_pub = tmp_path / "site-trust" / "operator.pub.pem"
    delta = gapforge("delta", str(built_changed.bundle), "--against", str(inventory), "--inventory-key",
                     str(operator_pub), "--out", str(tmp_path / "outgoing"), "--json")  # fmt: skip
    assert delta.returncode == 0, delta.stderr[-3000:]
    summary = json.loads(delta.stdout)
    layers = {layer["digest"]: layer for layer in built_changed.index["image"]["layers"]}
    carried = [layers[item["digest"]]["name"] for item in summary["included"] if item["digest"] in layers]
    assert carried == ["recipe"], summary["included"]
    recipe_bytes = sum(layers[item["digest"]]["size"] for item in summary["included"] if item["digest"] in layers)
    assert summary["delta_bytes"] - recipe_bytes < 1_000_000, summary["delta_bytes"]
    assert summary["delta_bytes"] < summary["full_bytes"] / 100
    # Inside: the delta plus the first bundle the site holds, rebuilt and verified like the full one.
    folder = Path(summary["delta"])
    joined = gapforge("join", str(folder), "--from", str(built.bundle.parent), "--out", str(tmp_path / "inside"),
                      "--key", str(built.public_key), env=site)  # fmt: skip
    assert joined.returncode == 0, joined.stderr[-3000:]
    rebuilt = tmp_path / "inside" / built_changed.bundle.name
    assert (rebuilt / "image.tar").read_bytes() == (built_changed.bundle / "image.tar").read_bytes()
    loaded = gapforge("load", str(folder), "--from", str(built.bundle.parent), "--rebuild-into",
                      str(tmp_path / "load-here"), "--key", str(built.public_key), env=site)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert built_changed.report["image"]["manifest_digest"] in loaded.stderr
    # Without what the site holds, the missing blobs are named with where they were looked for.
    missing = gapforge("join", str(folder), "--from", str(tmp_path / "outgoing"), "--out", str(tmp_path / "nothing"),
                       "--key", str(built.public_key), env=site)  # fmt: skip
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "wheels:torch" in missing.stderr and str(tmp_path / "outgoing") in missing.stderr


def test_split_for_media_survives_a_lost_and_a_corrupt_part(built: Built, tmp_path: Path) -> None:
    size = sum(p.stat().st_size for p in built.bundle.rglob("*") if p.is_file())
    medium = str(size // 5 + 1)  # about six media for this bundle, whatever its size
    split = gapforge("split", str(built.bundle), "--media", medium, "--parity", "2", "--out",
                     str(tmp_path / "media"), "--key", str(built.key))  # fmt: skip
    assert split.returncode == 0, split.stderr[-3000:]
    discs = sorted((tmp_path / "media").glob("disc-*"))
    assert len(discs) >= 5
    check = gapforge("join", str(discs[2]), "--check", "--key", str(built.public_key))
    assert check.returncode == 0 and "OK" in check.stdout + check.stderr
    shutil.rmtree(discs[0])  # a lost disc
    part = next(discs[1].glob("*.part"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bad sector on another
    part.write_bytes(bytes(data))
    joined = gapforge("join", *map(str, discs[1:]), "--out", str(tmp_path / "inside"), "--key", str(built.public_key))
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "verified" in joined.stderr
    # More lost than the parity covers: the exact media still needed are named.
    shutil.rmtree(discs[1])
    shutil.rmtree(discs[3])
    left = [str(disc) for disc in discs if disc.is_dir()]
    short = gapforge("join", *left, "--out", str(tmp_path / "again"), "--key", str(built.public_key))
    assert short.returncode == 2 and "needs" in short.stderr and "disc-01" in short.stderr, short.stderr[-2000:]
