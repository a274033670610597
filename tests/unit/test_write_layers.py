"""write_layers: missing layers written in parallel, listed in plan order, stored without a rehash."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gapforge import cache as cache_module
from gapforge.cache import Cache
from gapforge.hashing import sha256_file
from gapforge.image import LayerPlan, write_layers
from gapforge.oci.tar import Entry, write_tar

EPOCH = 1735689600


def _plan(name: str, size: int) -> LayerPlan:
    entries = [Entry(f"{name}/data.bin", "file", 0o644, data=name.encode() * size)]
    return LayerPlan(name, [name, str(size)], lambda _stage: entries)


def test_layers_are_written_in_parallel_in_plan_order_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rehashed: list[Path] = []
    real = sha256_file

    def counting(path: Path) -> str:
        rehashed.append(path)
        return real(path)

    monkeypatch.setattr(cache_module, "sha256_file", counting)
    cache = Cache(tmp_path / "cache")
    plans = [_plan(name, size) for name, size in (("a", 3_000_000), ("b", 10), ("c", 500_000))]
    first = write_layers(cache, plans, EPOCH, workers=3)
    assert [layer.name for layer in first.layers] == ["a", "b", "c"]
    assert first.written == ["a", "b", "c"] and first.reused == []
    for plan, layer in zip(plans, first.layers, strict=True):
        expected = write_tar(plan.entries(tmp_path), io.BytesIO(), EPOCH)
        assert (layer.digest, layer.size) == (expected.digest, expected.size)
        assert layer.path.read_bytes() and layer.path == cache.blob_path(layer.digest)
    assert rehashed == [], "a layer hashed as it was written is stored without a rehash"
    again = write_layers(cache, plans, EPOCH)
    assert again.layers == first.layers and again.reused == ["a", "b", "c"]
    assert rehashed == [], "a warm build trusts the layers this cache recorded"
