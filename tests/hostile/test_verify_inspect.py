"""`inspect` shows a bundle the trust gate proved (names and digests from its verified
bundle.json); an unproven one is refused, and with --insecure its malformed documents are one
paragraph naming the file and field, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bundles import ReleaseWorld, release_world, write_signed_bundle
from tests.hostile.conftest import Hostile
from tests.hostile.test_verify import attack_bundle


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReleaseWorld:
    return release_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def no_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "no-root"))


def test_inspect_of_a_released_bundle_under_the_root(
    hostile: Hostile, world: ReleaseWorld, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle)
    status, text = hostile.run("inspect", bundle, "--json", capsys=capsys)
    facts, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert status == 0 and facts["verified"] is True and facts["name"] == "unit-desk", text


def test_inspect_refuses_an_unsigned_bundle(
    hostile: Hostile, no_root: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = write_signed_bundle(tmp_path / "attacker", seed=66)
    bundle = attack_bundle(template, hostile.inputs, b'{"name": "evil"}', bytes(64))
    key = hostile.inputs / "release.pub.pem"
    key.write_bytes(_release_pem(tmp_path))
    status, text = hostile.run("inspect", bundle, "--key", key, capsys=capsys)
    assert (
        status in (1, 2) and "not verified" in text and "evil" not in text.split("not verified")[0]
    )
    status, text = hostile.run("inspect", bundle, capsys=capsys)
    assert status == 2 and "needs a trust anchor" in text


def _release_pem(folder: Path) -> bytes:
    from tests.bundles import signing_key

    return signing_key(folder).public_pem


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (b"[]", "not a JSON object"),
        (json.dumps({"name": "x", "version": "1", "image": {"manifest_digest": 1}}).encode(),
         "image.manifest_digest: expected a string, found a number"),
        (json.dumps({"name": "x", "version": "1", "model": {"source": "hf"},
                     "image": {"manifest_digest": "a", "config_digest": "b", "sha256": "c", "size": 1}}).encode(),
         "model.source: expected an object, found a string"),
    ],
    ids=["list", "digest-number", "model-source-string"],
)  # fmt: skip
def test_inspect_insecure_names_the_malformed_field(
    hostile: Hostile, no_root: None, tmp_path: Path, document: bytes, field: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    template = write_signed_bundle(tmp_path / "attacker", seed=66)
    bundle = attack_bundle(template, hostile.inputs, document, bytes(64))
    status, text = hostile.run("inspect", bundle, "--insecure", capsys=capsys)
    assert status == 2 and "bundle.json" in text and field in text, text
