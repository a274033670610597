"""gapforge split / join: media parts with zfec parity, per-block hashes, resume, read-only sources."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from gapforge.bundle.parity import StripeCoder
from gapforge.bundle.sign import SigningKey, write_key_pair
from gapforge.bundle.split_manifest import MANIFEST_NAME, PartsManifest
from gapforge.commands import split as split_cli
from gapforge.errors import BundleError
from gapforge.operator.join import STATE_NAME, join_parts
from gapforge.release_manager.split import parse_medium, split_bundle

BLOCK = 4096
MEDIUM = "256KiB"  # tiny media: a 1.2 MB bundle becomes 6 data parts


def make_bundle(root: Path, key: SigningKey, size: int = 1_200_000) -> Path:
    root.mkdir(parents=True)
    (root / "image.tar").write_bytes(os.urandom(size))
    (root / "recipe").mkdir()
    (root / "recipe" / "recipe.yaml").write_text("name: demo\n")
    index = {"name": "demo", "version": "0.1.0", "signing_key": {"fingerprint": key.fingerprint}}
    (root / "bundle.json").write_text(json.dumps(index))
    (root / "signing-key.pub.pem").write_bytes(key.public_pem)
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}"
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return write_key_pair(tmp_path / "keys" / "release.key")


@pytest.fixture
def pub(key: SigningKey) -> list:
    return [key.private.public_key()]


@pytest.fixture
def split(tmp_path: Path, key: SigningKey) -> tuple[Path, Path, PartsManifest]:
    bundle = make_bundle(tmp_path / "demo-0.1.0", key)
    out = tmp_path / "media"
    result = split_bundle(bundle, out, MEDIUM, 2, key, block_size=BLOCK)
    return bundle, out, result.manifest


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def part_path(out: Path, manifest: PartsManifest, name: str) -> Path:
    part = manifest.part(name)
    return out / part.medium / part.file


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_media_sizes() -> None:
    assert parse_medium("dvd") == ("dvd", 4_700_372_992)
    assert parse_medium("4.7G")[1] == 4_700_000_000
    assert parse_medium("700M")[1] == 700_000_000
    assert parse_medium("64KiB")[1] == 65536
    assert parse_medium("12345")[1] == 12345
    with pytest.raises(BundleError, match="not a medium"):
        parse_medium("floppy")


def test_zfec_any_k_of_k_plus_n() -> None:
    coder = StripeCoder(3, 2)
    data = [os.urandom(64) for _ in range(3)]
    shares = dict(enumerate(data + coder.encode(data)))
    for lost in [(0, 1), (1, 3), (2, 4), (3, 4), (0, 4)]:
        assert coder.decode({i: b for i, b in shares.items() if i not in lost}) == data


def test_split_layout(split: tuple[Path, Path, PartsManifest]) -> None:
    _, out, manifest = split
    assert manifest.k >= 4 and manifest.n == 2
    media = sorted(p.name for p in out.iterdir())
    assert media == [f"disc-{i:02d}" for i in range(1, manifest.k + 3)]
    stream = b"".join(part_path(out, manifest, p.name).read_bytes() for p in manifest.data_parts)
    assert hashlib.sha256(stream).hexdigest() == manifest.stream_sha256  # data parts are the stream
    for folder in out.iterdir():
        assert (folder / MANIFEST_NAME).is_file()
        assert not [f for f in folder.iterdir() if f.name.startswith(".")]  # no temporary left
        assert sum(f.stat().st_size for f in folder.iterdir()) <= parse_medium(MEDIUM)[1]
    readme = (out / "disc-03" / "README.txt").read_text()
    assert f"disc 3 of {manifest.k + 2}" in readme and f"needs any {manifest.k} of them" in readme


def test_split_then_join_is_identical(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    bundle, out, _ = split
    result = join_parts([out], tmp_path / "joined", pub)
    assert result.bundle == tmp_path / "joined" / "demo-0.1.0"
    assert tree(result.bundle) == tree(bundle)
    assert result.repaired_blocks == 0
    assert not (tmp_path / "joined" / ".join-demo-0.1.0").exists()


def test_lost_part_and_flipped_byte_are_repaired(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    bundle, out, manifest = split
    part_path(out, manifest, "data-02").unlink()
    flip(part_path(out, manifest, "data-04"), 5 * BLOCK + 17)
    seen: list[Path] = []
    result = join_parts([out], tmp_path / "joined", pub, after_join=seen.append)
    assert tree(result.bundle) == tree(bundle)
    assert result.repaired_blocks == len(manifest.part("data-02").blocks) + 1
    assert seen == [result.bundle]


def test_corrupt_parity_is_not_fed_to_zfec(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    bundle, out, manifest = split
    part_path(out, manifest, "data-01").unlink()
    flip(part_path(out, manifest, "parity-01"), 3 * BLOCK)  # zfec would silently rebuild garbage
    result = join_parts([out], tmp_path / "joined", pub)
    assert tree(result.bundle) == tree(bundle)


def test_too_many_lost_names_the_parts_needed(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    _, out, manifest = split
    part_path(out, manifest, "data-02").unlink()
    part_path(out, manifest, "data-05").unlink()
    for block in (3, 7):
        flip(part_path(out, manifest, "parity-01"), block * BLOCK)
    with pytest.raises(BundleError) as caught:
        join_parts([out], tmp_path / "joined", pub)
    message = str(caught.value)
    assert (
        "needs 1 more of: disc-02 (data-02, lost), disc-05 (data-05, lost), "
        f"disc-{manifest.k + 1:02d} (parity-01, corrupt blocks 3, 7)" in message
    )
    assert "parity-02" not in message


def test_check_one_medium(
    split: tuple[Path, Path, PartsManifest], key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, manifest = split
    parser = argparse.ArgumentParser()
    split_cli.join_arguments(parser)
    pem = key.path.with_name("release.pub.pem")
    args = parser.parse_args([str(out / "disc-03"), "--check", "--key", str(pem)])
    assert split_cli.cmd_join(args) == 0
    assert "disc-03: OK" in capsys.readouterr().err
    flip(part_path(out, manifest, "data-03"), 2 * BLOCK + 1)
    flip(part_path(out, manifest, "data-03"), 9 * BLOCK)
    assert split_cli.cmd_join(args) == 1
    err = capsys.readouterr().err
    assert "disc-03: BAD" in err and "bad blocks 2, 9 of" in err


def test_interrupted_join_resumes(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    bundle, out, manifest = split

    def stop_after_two(name: str) -> None:
        if name == "data-02":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        join_parts([out], tmp_path / "joined", pub, on_part=stop_after_two)
    state = json.loads((tmp_path / "joined" / ".join-demo-0.1.0" / STATE_NAME).read_bytes())
    assert sorted(state["good_blocks"]) == ["data-01", "data-02"]
    # the parts already copied are not read again: their media may even be gone now
    part_path(out, manifest, "data-01").unlink()
    part_path(out, manifest, "data-02").unlink()
    result = join_parts([out], tmp_path / "joined", pub)
    assert result.skipped == ["data-01", "data-02"]
    assert "data-01" not in result.copied and result.repaired_blocks == 0
    assert tree(result.bundle) == tree(bundle)


def test_sources_are_never_written(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    bundle, out, manifest = split
    part_path(out, manifest, "data-03").unlink()
    files = [p for p in out.rglob("*")]
    for path in sorted(files, key=lambda p: -len(p.parts)):
        path.chmod(stat.S_IREAD | (stat.S_IEXEC if path.is_dir() else 0))
    before = {p: p.stat().st_mtime_ns for p in files}
    try:
        result = join_parts([out], tmp_path / "joined", pub)
        assert tree(result.bundle) == tree(bundle)
        assert {p: p.stat().st_mtime_ns for p in files} == before
    finally:
        for path in files:
            path.chmod(0o755)


def test_tampered_manifest_fails_with_pinned_key(
    split: tuple[Path, Path, PartsManifest], tmp_path: Path, pub: list
) -> None:
    _, out, _ = split
    for folder in out.iterdir():
        envelope = json.loads((folder / MANIFEST_NAME).read_bytes())
        payload = envelope["payload"]
        envelope["payload"] = payload[:40] + ("A" if payload[40] != "A" else "B") + payload[41:]
        (folder / MANIFEST_NAME).write_text(json.dumps(envelope))
    with pytest.raises(BundleError, match="fails its check"):
        join_parts([out], tmp_path / "joined", pub)


def test_split_refuses_another_key(tmp_path: Path, key: SigningKey) -> None:
    bundle = make_bundle(tmp_path / "demo-0.1.0", key, size=10_000)
    other = write_key_pair(tmp_path / "other.key")
    with pytest.raises(BundleError, match="not the bundle's signing key"):
        split_bundle(bundle, tmp_path / "media", MEDIUM, 1, other, block_size=BLOCK)


def test_cli_split_and_unpinned_join(
    tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_bundle(tmp_path / "demo-0.1.0", key, size=300_000)
    parser = argparse.ArgumentParser()
    split_cli.split_arguments(parser)
    args = parser.parse_args(
        [str(bundle), "--media", "128KiB", "--parity", "1", "--out", str(tmp_path / "m"),
         "--key", str(key.path), "--block-size", str(BLOCK)]
    )  # fmt: skip
    assert split_cli.cmd_split(args) == 0
    parser = argparse.ArgumentParser()
    split_cli.join_arguments(parser)
    media = sorted(str(p) for p in (tmp_path / "m").iterdir())
    args = parser.parse_args([*media[1:], "--out", str(tmp_path / "joined")])
    assert split_cli.cmd_join(args) == 0
    assert "UNPINNED" in capsys.readouterr().err
    assert tree(tmp_path / "joined" / "demo-0.1.0") == tree(bundle)
