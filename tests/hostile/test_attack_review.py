"""The attacker's review of issue 22's fix: inputs the first corpus did not hold.

Each case is an input an attacker in transit, on the media or writing a recipe would make, the
operator command it is given to, and the expected refusal; the `hostile` fixture adds the shared
checks (nothing written outside the output folder, no host bytes in any output).

A race (a file swapped between the read that is hashed and the read that is used) is written here
by wrapping the one function every bundle document is opened with, so the swap happens at exactly
the moment a racing writer on a shared or FUSE-mounted medium would make it: the test is
deterministic, and the code under test is the real verify.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gapforge.bundle.documents
from gapforge.bundle import INDEX, PRETEST
from tests.bundles import ReleaseWorld, release_world, signing_key, write_signed_bundle
from tests.hostile.conftest import Hostile


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A genuine bundle signed by the release key (seed 1), made once."""
    return write_signed_bundle(tmp_path_factory.mktemp("genuine"))


def _copy(genuine: Path, hostile: Hostile) -> tuple[Path, Path]:
    """The bundle in the attacker's hands, and the operator's pinned release key beside it."""
    bundle = hostile.inputs / genuine.name
    shutil.copytree(genuine, bundle)
    key = hostile.inputs / "release.pub.pem"
    key.write_bytes(signing_key(hostile.inputs).public_pem)
    return bundle, key


def _race(monkeypatch: pytest.MonkeyPatch, target: Path, swap_in: bytes, first: bool) -> None:
    """The racing writer: at the first open of `target` by the document reader, `swap_in` is
    renamed into its place, just after that open (`first`: that read still sees the old bytes,
    every later read the new ones) or just before it (only that read sees the new bytes, the
    hash having been taken before)."""
    real: Callable[[Path], int] = gapforge.bundle.documents.open_regular
    swapped: list[bool] = []

    def swap() -> None:
        fresh = target.with_name(target.name + ".swap")
        fresh.write_bytes(swap_in)
        os.replace(fresh, target)  # a descriptor already open keeps reading the old bytes

    def racing_open(path: Path) -> int:
        if Path(path) != target or swapped:
            return real(path)
        swapped.append(True)
        if not first:
            swap()
        fd = real(path)
        if first:
            swap()
        return fd

    monkeypatch.setattr(gapforge.bundle.documents, "open_regular", racing_open)


def _retag(data: bytes) -> bytes:
    index = json.loads(data)
    index["image"]["ref"] = "docker.io/library/ubuntu:latest"  # a tag `load` would give the image
    return json.dumps(index).encode()


def _revote(data: bytes) -> bytes:
    evidence = json.loads(data)
    evidence["verdict"] = "ubuntu:latest"  # what a failed pretest would rewrite to pass
    return json.dumps(evidence).encode()


@pytest.mark.parametrize(
    ("name", "alter", "read_first"), [(INDEX, _retag, True), (PRETEST, _revote, False)]
)
def test_a_document_swapped_between_hash_and_use_is_not_used(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, name: str, alter: Callable[[bytes], bytes], read_first: bool,
) -> None:  # fmt: skip
    """The documents verify uses must be the very bytes that hashed to their signed lines: a
    medium that serves altered bytes to the read that is used and the genuine ones to the read
    that is hashed must not get them into the verified record (before: exit 0, `verified: true`).
    bundle.json is read to be used before the files are hashed; the evidence after."""
    bundle, key = _copy(genuine, hostile)
    real = (bundle / name).read_bytes()
    if read_first:
        (bundle / name).write_bytes(alter(real))
        _race(monkeypatch, bundle / name, real, first=True)
    else:
        _race(monkeypatch, bundle / name, alter(real), first=False)
    status, text = hostile.run("inspect", bundle, "--key", key, "--json", capsys=capsys)
    assert status == 1 and "ubuntu:latest" not in text, text
    assert f"{name}: its bytes changed between two reads" in " ".join(text.split()), text


@pytest.mark.parametrize("link", ["notes.txt", "sub/desk.jsonl"])
def test_a_link_in_the_lm_eval_task_folder_to_a_host_file_is_refused(
    hostile: Hostile, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    """A recipe author's lm-eval task folder is shipped whole, into the image and the bundle: a
    link in it to a file of the build host (the canary here; ~/.ssh/id_rsa or the signing key in
    earnest) must not be read into either. Before: `validate` passed (only the YAMLs' data_files
    were checked) and the build read the canary's bytes into the recipe layer."""
    from gapforge.names import UnsafeName
    from gapforge.recipe import load_recipe
    from gapforge.stages.assemble import lm_eval_task_files
    from tests.unit.test_recipe import _lm_eval_recipe

    recipe = _lm_eval_recipe(hostile.inputs)
    loaded = load_recipe(recipe)  # checked before the link appears: the build reads it later
    target = hostile.inputs / "data" / "lm_eval" / link
    target.parent.mkdir(exist_ok=True)
    target.symlink_to(hostile.canary)
    status, text = hostile.run("validate", recipe, capsys=capsys)
    assert status == 2 and link in text and "leads out of" in text, text
    assert hostile.secret.decode() not in text
    with pytest.raises(UnsafeName, match="symbolic link"):
        lm_eval_task_files(loaded)


def _then(monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]) -> None:
    """The medium changes the bundle right after `diff`'s gate verified it (the racing writer)."""
    import gapforge.operator.transfer_trust

    real = gapforge.operator.transfer_trust.verify_or_refuse

    def verify_then_change(folder: Path, anchor: Any, command: str) -> Any:
        report = real(folder, anchor, command)
        change(folder)
        return report

    monkeypatch.setattr(gapforge.operator.transfer_trust, "verify_or_refuse", verify_then_change)


def _evil_verdict(folder: Path) -> None:
    evidence = json.loads((folder / PRETEST).read_bytes())
    evidence["verdict"] = "EVIL-VERDICT"
    fresh = folder / "evidence.swap"
    fresh.write_text(json.dumps(evidence))
    os.replace(fresh, folder / PRETEST)


def _lock_to_canary(canary: Path) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / "recipe/locks/cpu.txt").unlink()
        (folder / "recipe/locks/cpu.txt").symlink_to(canary)

    return change


@pytest.mark.parametrize(
    ("change", "said"),
    [("evidence rewritten", "changed after it was verified"),
     ("lock made a link to a host file", "symbolic link")],
)  # fmt: skip
def test_diff_compares_only_the_bytes_that_were_verified(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, change: str, said: str,
) -> None:  # fmt: skip
    """diff verifies each side, then reads its documents and locks again: what it reads must be
    what was verified (each file's bytes against the verified SHA256SUMS, no link followed).
    Before: the rewritten evidence's verdict was shown as the bundle's, exit 0 (a hole); a lock
    swapped for a link was already refused by the lock reader's link check (held)."""
    bundle, key = _copy(genuine, hostile)
    other = hostile.inputs / "other"
    shutil.copytree(genuine, other)
    _then(monkeypatch, _evil_verdict if "evidence" in change else _lock_to_canary(hostile.canary))
    status, text = hostile.run("diff", other, bundle, "--key", key, capsys=capsys)
    assert status == 2 and "EVIL-VERDICT" not in text, text
    assert said in " ".join(text.split()), text


def test_inspect_shows_only_the_documents_that_were_verified(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """inspect proves the bundle, then reads its evidence, recipe, SBOM and provenance again to
    show them: a verdict rewritten after the gate must not be shown beside `verified: true`.
    Before: `"verdict": "EVIL-VERDICT"`, exit 0."""
    import gapforge.operator.gate

    bundle, key = _copy(genuine, hostile)
    real = gapforge.operator.gate.gate

    def gate_then_change(report: Any, command: str) -> Any:
        verified = real(report, command)
        _evil_verdict(bundle)
        return verified

    monkeypatch.setattr(gapforge.operator.gate, "gate", gate_then_change)
    status, text = hostile.run("inspect", bundle, "--key", key, "--json", capsys=capsys)
    assert status == 2 and "EVIL-VERDICT" not in text, text
    assert "changed after it was verified" in " ".join(text.split()), text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> ReleaseWorld:
    """A release repository, its released bundle, a trust folder pinning its root (made once)."""
    return release_world(tmp_path_factory.mktemp("world"))


def _payload_in_root(metadata: Path) -> None:
    root = json.loads((metadata / "1.root.json").read_bytes())
    root["signed"]["x-payload"] = "ATTACKER " * 64  # unsigned: the client never reads v1 again
    (metadata / "1.root.json").write_text(json.dumps(root))


def _extra_role(metadata: Path) -> None:
    candidate = next(metadata.glob("*.candidate.json"))
    (metadata / candidate.name.replace("candidate", "payload")).write_bytes(candidate.read_bytes())


@pytest.mark.parametrize("change", [_payload_in_root, _extra_role], ids=["root v1", "extra role"])
def test_release_metadata_the_tuf_client_never_verified_is_refused(
    world: ReleaseWorld, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None],
) -> None:  # fmt: skip
    """Under the trusted root every file of release/metadata/ must be metadata the TUF client
    verified (issue 22, item 6): an altered copy of a root version the site already trusts (which
    the client never reads again) or an extra, well-formed role file nothing delegates to is an
    extraneous file. Before: `verify` exit 0, `ok: true`."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(world.trust))
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle)
    change(bundle / "release" / "metadata")
    status, text = hostile.run("verify", bundle, capsys=capsys)
    flat = " ".join(text.split())
    assert status == 1 and ("never read it" in flat or "not those the TUF client verified" in flat)
    shutil.rmtree(bundle / "release")
    shutil.copytree(world.bundle / "release", bundle / "release")
    status, text = hostile.run("verify", bundle, capsys=capsys)
    assert status == 0, text  # the genuine metadata still verifies


@pytest.mark.skipif(shutil.which("clamscan") is None, reason="no clamscan")
def test_load_scan_never_unpacks_an_archive_whose_bytes_were_not_hashed(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`load` leaves the archive's bytes to the stream into the engine; with --scan, ClamAV
    unpacked every layer of that not-yet-hashed archive first (issue 22 item 3: nothing is
    unpacked or scanned before the check passes). A layer altered in transit (its structure
    intact) was unpacked into --scan-tmp; after: refused before any layer is touched, exit 1, and
    the engine is never contacted."""
    from gapforge import scan as scan_module

    bundle, key = _copy(genuine, hostile)
    tar = bundle / "image.tar"
    data = tar.read_bytes()
    assert data.count(b"debian") > 1
    tar.write_bytes(data.replace(b"debian", b"DEBIAN", 1))  # same size, same tar headers
    database = hostile.inputs / "clamav-db"
    database.mkdir()
    (database / "site.hdb").write_text("0" * 32 + ":1:Site.Nothing\n")
    unpacked: list[object] = []
    monkeypatch.setattr(scan_module, "extract_archive", lambda *a, **k: unpacked.append(a))
    scratch = hostile.out / "scan-tmp"
    scratch.mkdir(parents=True)
    status, text = hostile.run("load", bundle, "--key", key, "--scan", "--clamav-db", database,
                               "--scan-tmp", scratch, capsys=capsys)  # fmt: skip
    assert not unpacked, "an archive whose bytes were not checked was unpacked for the scan"
    assert status == 1 and "image.tar" in text, text


def test_release_metadata_nobody_verified_is_refused_under_a_pinned_key_too(
    world: ReleaseWorld, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.inputs / "no-root"))
    bundle = hostile.inputs / world.bundle.name
    shutil.copytree(world.bundle, bundle)
    _payload_in_root(bundle / "release" / "metadata")
    key = hostile.inputs / "build.pub.pem"
    key.write_bytes(world.build_key.public_pem)
    status, text = hostile.run("verify", bundle, "--key", key, "--json", capsys=capsys)
    report, _ = json.JSONDecoder().raw_decode(text[text.index("{") :])
    assert status == 1 and report["ok"] is False, text
    refused = {p["file"] for p in report["problems"] if "nothing verified it" in p["message"]}
    assert refused and all(name.startswith("release/metadata/") for name in refused), report


@pytest.mark.parametrize(
    "name", ["x\x1b[2J\x1b[32mverified: ok\x1b[0m", "x\rSIGNATURE OK", "x\u2028ok", "x\x9bc"]
)
def test_a_file_name_cannot_write_escape_sequences_to_the_operators_terminal(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """An unlisted file's name is shown in verify's report: with ESC sequences it cleared the
    operator's screen and painted a green "verified: ok" over a failed check (exit 1 all the
    same); a CR overwrote the line. After: every control or format character is shown escaped
    (names.printable), in the report and in any error message."""
    bundle, key = _copy(genuine, hostile)
    (bundle / name).write_bytes(b"x")
    for argv in (("verify", bundle, "--key", key), ("load", bundle, "--key", key)):
        status, text = hostile.run(*argv, capsys=capsys)
        assert status == 1, text
        leaked = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl") and c != "\n"]
        assert not leaked, f"control characters reached the terminal: {leaked!r}"
