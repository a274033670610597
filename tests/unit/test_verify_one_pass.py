"""verify reads the image archive once (its blobs hashed in the same pass); load hashes it only as
it streams into Docker, against the signed SHA256SUMS line, and refuses before any tag."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from gapforge import engine
from gapforge.bundle import IMAGE_TAR, SUMS
from gapforge.bundle import sums as sums_module
from gapforge.bundle.imagetar import read_archive
from gapforge.bundle.sums import HashJob, _hash_range, hash_jobs, prefetch
from gapforge.operator import load as load_module
from gapforge.operator import verify as verify_module
from gapforge.operator.load import Refused, load_bundle
from gapforge.operator.verify import verify_bundle
from tests.unit.test_bundle import _pinned, bundle, source  # noqa: F401 (fixtures)


def _opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The label of every job hashed from here on (each is one read of its byte range)."""
    seen: list[str] = []
    real_range, real_parts = sums_module._hash_range, sums_module._hash_with_parts

    def hash_range(job: HashJob, advance: Any) -> Any:
        seen.append(job.label)
        return real_range(job, advance)

    def hash_parts(job: HashJob, advance: Any, threads: int) -> Any:
        seen.append(job.label)
        return real_parts(job, advance, threads)

    monkeypatch.setattr(sums_module, "_hash_range", hash_range)
    monkeypatch.setattr(sums_module, "_hash_with_parts", hash_parts)
    return seen


def _flip_inside_a_blob(tar: Path) -> str:
    """Change one byte inside the biggest blob; return that blob's digest."""
    archive = read_archive(tar)
    member = max(archive.members.values(), key=lambda m: m.size)
    data = bytearray(tar.read_bytes())
    data[member.offset + member.size // 2] ^= 0xFF
    tar.unlink()  # the bundle may share the archive's inode with the build's copy
    tar.write_bytes(bytes(data))
    return "sha256:" + member.name.rsplit("/", 1)[1]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_pass_gives_what_separate_reads_give(tmp_path: Path, threads: int) -> None:
    path = tmp_path / "file"
    path.write_bytes(bytes(range(256)) * 40_000)  # several chunks
    parts = (
        HashJob("p:empty", path, 5, 0),
        HashJob("p:head", path, 0, 1000),
        HashJob("p:across", path, sums_module.CHUNK - 10, 5_000),
        HashJob("p:tail", path, 10_000_000, 240_000),
        HashJob("p:past-the-end", path, 10_200_000, 100_000),
    )
    whole = HashJob("whole", path)
    together = sums_module._hash_with_parts(HashJob("whole", path, parts=parts), lambda _n: None, threads)
    apart = [_hash_range(job, lambda _n: None) for job in (whole, *sorted(parts, key=lambda p: p.offset))]
    assert sorted(together, key=lambda r: r.label) == sorted(apart, key=lambda r: r.label)
    assert next(r for r in together if r.label == "p:past-the-end").error == "ends after 40000 of 100000 bytes"
    results = hash_jobs([HashJob("whole", path, parts=parts)], workers=2)
    assert results["whole"].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_verify_reads_the_archive_once_even_deep(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    seen = _opens(monkeypatch)
    report = verify_bundle(bundle, _pinned(tmp_path), workers=2, deep=True)
    assert report.ok, report.problems
    assert seen.count(IMAGE_TAR) == 1 and not [s for s in seen if s.startswith(f"{IMAGE_TAR}:")]


def test_an_altered_blob_is_named_from_deeps_single_pass_or_a_second_read(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    intact = _opens(monkeypatch)
    assert verify_bundle(bundle, _pinned(tmp_path), workers=2).ok
    assert intact.count(IMAGE_TAR) == 1 and not [s for s in intact if s.startswith(f"{IMAGE_TAR}:")]
    monkeypatch.undo()
    blob = _flip_inside_a_blob(bundle / IMAGE_TAR)
    one_thread = verify_bundle(bundle, _pinned(tmp_path), workers=1)
    seen = _opens(monkeypatch)
    deep = verify_bundle(bundle, _pinned(tmp_path), workers=2, deep=True)
    assert seen.count(IMAGE_TAR) == 1 and not [s for s in seen if s.startswith(f"{IMAGE_TAR}:")]
    seen.clear()
    report = verify_bundle(bundle, _pinned(tmp_path), workers=2)
    assert seen.count(IMAGE_TAR) == 1 and [s for s in seen if s.startswith(f"{IMAGE_TAR}:")]  # the blobs, read again
    assert [(p.file, p.message) for p in report.problems] == [(p.file, p.message) for p in one_thread.problems]
    assert {(p.file, p.message) for p in report.problems} <= {(p.file, p.message) for p in deep.problems}
    messages = [p.message for p in report.problems if p.file == IMAGE_TAR]
    assert any(m.startswith("sha256 is ") and f"{SUMS} line" in m for m in messages)
    assert any(m.startswith(f"blob {blob} (") and m.endswith("was altered") for m in messages)


def test_a_prefetched_archive_hash_is_taken_not_read_again(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    early = prefetch(bundle / IMAGE_TAR)
    assert early is not None
    seen = _opens(monkeypatch)
    told: list[int] = []
    report = verify_bundle(bundle, _pinned(tmp_path), workers=2, prefetched=early)
    assert report.ok and IMAGE_TAR not in seen
    assert early.take(IMAGE_TAR, told.append).sha256 == hashlib.sha256((bundle / IMAGE_TAR).read_bytes()).hexdigest()
    assert sum(told) == 0  # everything was already told during verify
    monkeypatch.undo()
    _flip_inside_a_blob(bundle / IMAGE_TAR)  # the prefetch hashes what is there, like any read
    bad = verify_bundle(bundle, _pinned(tmp_path), workers=2, prefetched=prefetch(bundle / IMAGE_TAR))
    assert IMAGE_TAR in bad.bad_files
    assert prefetch(tmp_path / "no-such-file") is None


class _FakeEngine:
    """engine.load as the real one behaves: hashes what it streams, refuses before tagging."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.tagged: list[str] = []

    def load(self, _client: object, tar: Path, config_digest: str, ref: str | None = None, sha256: str = "") -> str:
        sent = hashlib.sha256(tar.read_bytes()).hexdigest()
        self.loaded.append((config_digest, sha256))
        if sha256 and sent != sha256:
            raise engine.ImageMismatch(f"{tar}: the bytes sent hash to sha256:{sent}, not the verified {sha256}")
        self.tagged.append(ref or "")
        return ref or ""


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> _FakeEngine:
    fake = _FakeEngine()
    monkeypatch.setattr(engine, "connect", lambda: object())
    monkeypatch.setattr(engine, "load", fake.load)
    monkeypatch.setattr(load_module, "record_receipt", lambda *a, **k: Path("receipt.json"))
    return fake


def _signed_line(folder: Path) -> str:
    return next(line.split("  ")[0] for line in (folder / SUMS).read_text().splitlines() if line.endswith(f"  {IMAGE_TAR}"))


def test_load_hashes_the_archive_only_as_it_streams(bundle: Path, tmp_path: Path, fake_engine: _FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    seen = _opens(monkeypatch)
    loaded = load_bundle(bundle, _pinned(tmp_path))
    assert IMAGE_TAR not in seen and not [s for s in seen if s.startswith(f"{IMAGE_TAR}:")]
    assert fake_engine.loaded == [(loaded.config_digest, _signed_line(bundle))], "checked against the signed line"
    assert fake_engine.tagged and loaded.report.ok
    assert loaded.report.bytes_hashed >= (bundle / IMAGE_TAR).stat().st_size


@pytest.mark.parametrize("cores", [1, 2])
def test_load_refuses_an_altered_archive_before_any_tag(bundle: Path, tmp_path: Path, fake_engine: _FakeEngine, cores: int, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(verify_module, "default_workers", lambda: cores)  # one core: blobs read apart
    blob = _flip_inside_a_blob(bundle / IMAGE_TAR)
    shown: list[Any] = []
    with pytest.raises(Refused, match="failed verification"):
        load_bundle(bundle, _pinned(tmp_path), on_verified=shown.append)
    assert fake_engine.tagged == [] and len(fake_engine.loaded) == 1
    messages = [p.message for p in shown[0].problems if p.file == IMAGE_TAR]
    assert any(m.startswith("sha256 is ") for m in messages)
    assert any(m.startswith(f"blob {blob} (") for m in messages), "the altered blob is named, as verify names it"
