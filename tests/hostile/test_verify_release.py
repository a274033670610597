"""Issue 22 item 6: the whole bundle is covered. Links and extra files in release/ (and links
anywhere) are refused with a pinned key and under the trusted root; nothing is read through a link
(the canary outside never reaches an output)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from gapforge.bundle import PRETEST, SIGNATURE, SUMS
from tests.bundles import ReleaseWorld, release_world
from tests.hostile.conftest import Hostile


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReleaseWorld:
    return release_world(tmp_path_factory.mktemp("world"))


def _link_root(bundle: Path, hostile: Hostile) -> None:
    (bundle / "release" / "rootfs").symlink_to("/")


def _link_shadow(bundle: Path, hostile: Hostile) -> None:
    (bundle / "release" / "metadata" / "x.json").symlink_to(hostile.canary)


def _replace_timestamp_by_link(bundle: Path, hostile: Hostile) -> None:
    timestamp = bundle / "release" / "metadata" / "timestamp.json"
    timestamp.unlink()
    timestamp.symlink_to(hostile.canary)


def _extra_file(bundle: Path, hostile: Hostile) -> None:
    (bundle / "release" / "notes.txt").write_text("run this\n")


def _extra_metadata_name(bundle: Path, hostile: Hostile) -> None:
    (bundle / "release" / "metadata" / "evil.json").write_text("{}\n")


def _fake_role_file(bundle: Path, hostile: Hostile) -> None:
    (bundle / "release" / "metadata" / "7.approved.json").write_text(json.dumps({"signed": 1}))


def _signature_link(bundle: Path, hostile: Hostile) -> None:
    (bundle / SIGNATURE).unlink()
    (bundle / SIGNATURE).symlink_to(hostile.canary)


def _sums_link(bundle: Path, hostile: Hostile) -> None:
    target = hostile.inputs / "SHA256SUMS.real"
    shutil.copyfile(bundle / SUMS, target)
    (bundle / SUMS).unlink()
    (bundle / SUMS).symlink_to(target)


def _pretest_folder_link(bundle: Path, hostile: Hostile) -> None:
    real = hostile.inputs / "pretest-real"
    shutil.copytree(bundle / "pretest", real)
    shutil.rmtree(bundle / "pretest")
    (bundle / "pretest").symlink_to(real)


def _evidence_link(bundle: Path, hostile: Hostile) -> None:
    (bundle / PRETEST).unlink()
    (bundle / PRETEST).symlink_to(hostile.canary)


def _fifo(bundle: Path, hostile: Hostile) -> None:
    import os

    os.mkfifo(bundle / "release" / "metadata" / "pipe.json")


ATTACKS: dict[str, tuple[Callable[[Path, Hostile], None], str, str]] = {
    "release-rootfs-link-to-root": (_link_root, "release/rootfs", "a symbolic link"),
    "release-metadata-link-out": (_link_shadow, "release/metadata/x.json", "a symbolic link"),
    "timestamp-replaced-by-link": (_replace_timestamp_by_link, "release/metadata/timestamp.json",
                                   "a symbolic link"),
    "release-extra-file": (_extra_file, "release/notes.txt", "not part of the signed release"),
    "release-extra-metadata-name": (_extra_metadata_name, "release/metadata/evil.json",
                                    "not a TUF metadata file name"),
    "release-fake-role-file": (_fake_role_file, "release/metadata/7.approved.json", "not TUF metadata"),
    "signature-is-a-link": (_signature_link, SIGNATURE, "a symbolic link"),
    "sums-is-a-link": (_sums_link, SUMS, "a symbolic link"),
    "pretest-folder-is-a-link": (_pretest_folder_link, "pretest", "a symbolic link"),
    "evidence-is-a-link": (_evidence_link, PRETEST, "a symbolic link"),
    "release-fifo": (_fifo, "release/metadata/pipe.json", "a FIFO"),
}  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
@pytest.mark.parametrize("anchor", ["root", "key"])
def test_links_and_extra_files_anywhere_are_refused(
    hostile: Hostile, world: ReleaseWorld, attack: str, anchor: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    change, file, expected = ATTACKS[attack]
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle, symlinks=True)
    change(bundle, hostile)
    argv: list[str | Path] = ["verify", bundle, "--json"]
    if anchor == "root":
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    else:
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root / "no-trust-here"))
        key = hostile.inputs / "release.pub.pem"
        key.write_bytes(world.build_key.public_pem)
        argv += ["--key", key]
    status, text = hostile.run(*argv, capsys=capsys)
    report, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert status in (1, 2) and report["ok"] is False and report["authenticated"] is False, text
    messages = [(p["file"], p["message"]) for p in report["problems"]]
    assert any(f == file and expected in m for f, m in messages), messages
    assert hostile.secret.decode() not in text, "the canary's bytes were read and shown"


@pytest.mark.parametrize("anchor", ["root", "key-without-release"])
def test_the_genuine_bundle_with_its_release_metadata_verifies(
    hostile: Hostile, world: ReleaseWorld, anchor: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Under the root, with its release metadata; under --key, once release/ (which only the
    root's check reads, so nothing proves it there) is removed: with it, see test_attack_review."""
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle, symlinks=True)
    argv: list[str | Path] = ["verify", bundle]
    if anchor == "root":
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    else:
        shutil.rmtree(bundle / "release")
        monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root / "no-trust-here"))
        key = hostile.inputs / "release.pub.pem"
        key.write_bytes(world.build_key.public_pem)
        argv += ["--key", key]
    status, text = hostile.run(*argv, capsys=capsys)
    assert status == 0 and "verified" in text and "signature     ok" in text, text
