"""The attacker's review of issue 22's fix, continued (tests/hostile/test_attack_review.py holds
the rest): the stream `load` sends to the engine, and names that are FIFOs where a file belongs.

The untagged stream (gapforge.oci.untag) is exercised directly, on the real code: an archive that
would fail its hash is still streamed to the engine first, so what the engine would read as
manifest.json must never carry tags. FIFOs: opening one waits for a writer; the cases run in a
thread and fail (instead of hanging the suite) when the command is still waiting after 60 s.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gapforge.oci.untag import ArchiveFormatError, UntaggedStream
from tests.hostile.conftest import Hostile
from tests.hostile.test_attack_review import _copy, genuine

__all__ = ["genuine"]  # the module fixture, shared


_TAGS = json.dumps([{"Config": "c.json", "RepoTags": ["ubuntu:latest"], "Layers": []}]).encode()


def _member(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, **pax: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(_TAGS)
    else:
        info.linkname = "decoy.json" if kind != tarfile.SYMTYPE or name != "d" else "."
    info.pax_headers = dict(pax)
    tar.addfile(info, io.BytesIO(_TAGS) if kind == tarfile.REGTYPE else None)


_DISGUISES: dict[str, Callable[[tarfile.TarFile], None]] = {
    "pax path": lambda t: _member(t, "decoy.json", path="manifest.json"),
    "./ name": lambda t: _member(t, "./manifest.json"),
    "GNU long name with ..": lambda t: _member(t, "a/" * 60 + "../" * 60 + "manifest.json"),
    "hard link": lambda t: (_member(t, "decoy.json"), _member(t, "manifest.json", tarfile.LNKTYPE)),
    "symlink": lambda t: (_member(t, "decoy.json"), _member(t, "manifest.json", tarfile.SYMTYPE)),
    "folder link": lambda t: (_member(t, "d", tarfile.SYMTYPE), _member(t, "d/manifest.json")),
}


@pytest.mark.parametrize("disguise", sorted(_DISGUISES))
def test_a_disguised_manifest_json_never_reaches_the_engine_with_its_tags(disguise: str) -> None:
    """`load` streams the archive to the engine with manifest.json's RepoTags taken out, so no tag
    is given before the image ID is compared. An archive (one that then fails its hash: the tag
    would already sit on the attacker's image) may name manifest.json so that the rewrite does not
    see it but docker's extraction does: by a pax path, `./`, a long name with `..`, a hard or
    symbolic link to a member holding tags, or a folder link. Before: streamed with the tags
    intact; after: refused (the engine gets a broken stream, and loads nothing)."""
    buffer = io.BytesIO()
    fmt = tarfile.GNU_FORMAT if "GNU" in disguise else tarfile.PAX_FORMAT
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        _DISGUISES[disguise](tar)
    stream = UntaggedStream(io.BytesIO(buffer.getvalue()))
    with pytest.raises(ArchiveFormatError, match=r"manifest\.json"):
        b"".join(stream.chunks())


@pytest.mark.parametrize("key", ["repotags", "REPOTAGS", "RepoTag\u017f"])
def test_a_repotags_key_in_another_case_never_reaches_the_engine(key: str) -> None:
    """docker parses manifest.json with Go's encoding/json, which takes `repotags` (any case, and
    U+017F for s) as RepoTags, the last key winning. Before: the stream nulled `RepoTags` and
    passed the other key on, so the engine tagged the image before its ID was compared; after:
    refused."""
    entry = {"Config": "c.json", "RepoTags": [], key: ["ubuntu:latest"], "Layers": []}
    data = json.dumps([entry]).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    stream = UntaggedStream(io.BytesIO(buffer.getvalue()))
    with pytest.raises(ArchiveFormatError, match="docker reads as RepoTags"):
        b"".join(stream.chunks())


@pytest.mark.parametrize("name", ["SHA256SUMS.sig", "SHA256SUMS", "bundle.json"])
def test_a_fifo_where_a_signed_file_belongs_is_refused_at_once(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A medium (or a tar the bundle came in) can hold a FIFO. Opening one for reading waits for
    a writer that never comes: before, `verify` hung forever on a FIFO named SHA256SUMS.sig (the
    walk reported it, then the signature reader opened it). After: refused, exit 2."""
    bundle, key = _copy(genuine, hostile)
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    outcome: list[tuple[int, str]] = []
    worker = threading.Thread(
        target=lambda: outcome.append(hostile.run("verify", bundle, "--key", key, capsys=capsys)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    assert outcome, f"verify still waits on the FIFO {name} after 60 s"
    status, text = outcome[0]
    assert status in (1, 2) and name in text, text


@pytest.mark.parametrize("name", ["recipe/recipe.yaml", "sbom.cdx.json", "image.tar"])
def test_a_listed_file_swapped_for_a_fifo_after_the_walk_is_refused_at_once(
    genuine: Path, hostile: Hostile, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:  # fmt: skip
    """verify walks the folder (a FIFO there is reported), then hashes each listed file: a name
    swapped for a FIFO between the two must not make the hashing wait forever for a writer.
    Before: `verify` hung on a FIFO swapped in for recipe/recipe.yaml. After: refused, named."""
    import gapforge.operator.verify

    bundle, key = _copy(genuine, hostile)
    real = gapforge.operator.verify.walk_bundle

    def walk_then_swap(root: Path) -> Any:
        tree = real(root)
        (root / name).unlink()
        os.mkfifo(root / name)
        return tree

    monkeypatch.setattr(gapforge.operator.verify, "walk_bundle", walk_then_swap)
    outcome: list[tuple[int, str]] = []
    worker = threading.Thread(
        target=lambda: outcome.append(hostile.run("verify", bundle, "--key", key, capsys=capsys)),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    assert outcome, f"verify still waits on the FIFO {name} after 60 s"
    status, text = outcome[0]
    assert status in (1, 2) and name in text, text
