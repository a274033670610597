"""Lock parsing and staleness, the Debian lock, model locks (local, hf through a fake hub), the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gapforge.cache import Cache
from gapforge.errors import FetchError, LockError, ModelSourceError
from gapforge.fetch.rootfs import DebianPackage
from gapforge.hashing import sha256_file
from gapforge.lock.debian import compare_packages, read_debian_lock, write_debian_lock
from gapforge.lock.model import lock_hf, lock_local, read_model_lock, select_model_files
from gapforge.lock.python import (
    INPUTS_HEADER,
    check_fresh,
    inputs_sha256,
    parse_python_lock,
)
from gapforge.profile import REPO_ROOT, load_profile
from gapforge.recipe import ModelSpec

H1, H2 = "a" * 64, "b" * 64


def _lock(tmp_path: Path, body: str, inputs: str = "c" * 64) -> Path:
    path = tmp_path / "cpu.txt"
    path.write_text(f"# header\n{INPUTS_HEADER}{inputs}\n{body}")
    return path


def test_parse_hash_locked_requirements(tmp_path: Path) -> None:
    path = _lock(
        tmp_path,
        f"torch==2.13.0+cpu \\\n    --hash=sha256:{H1}\n    # via -r x.in\nsix==1.16.0 --hash=sha256:{H1} --hash=sha256:{H2}\n",
    )
    lock = parse_python_lock(path)
    assert [(r.name, r.version, r.hashes) for r in lock.requirements] == [
        ("torch", "2.13.0+cpu", (H1,)),
        ("six", "1.16.0", (H1, H2)),
    ]
    assert lock.by_name()["torch"].line() == f"torch==2.13.0+cpu --hash=sha256:{H1}"


def test_unhashed_or_unpinned_lines_are_refused(tmp_path: Path) -> None:
    path = _lock(tmp_path, f"six>=1.0 --hash=sha256:{H1}\nrequests==2.0\n")
    with pytest.raises(LockError) as caught:
        parse_python_lock(path)
    assert "cpu.txt:3" in str(caught.value) and "cpu.txt:4" in str(caught.value)
    assert "nox -s lock" in str(caught.value)


def test_missing_lock_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(LockError, match="missing: run 'nox -s lock'"):
        parse_python_lock(tmp_path / "cpu.txt")


def test_hand_edited_lock_without_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cpu.txt"
    path.write_text(f"six==1.16.0 --hash=sha256:{H1}\n")
    with pytest.raises(LockError, match="edited by hand"):
        parse_python_lock(path)


def test_stale_lock_is_detected(tmp_path: Path) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("six\n")
    lock = parse_python_lock(
        _lock(tmp_path, f"six==1.16.0 --hash=sha256:{H1}\n", inputs_sha256(source))
    )
    check_fresh(lock, inputs_sha256(source), str(source))
    source.write_text("six\nrequests\n")
    with pytest.raises(LockError, match=r"is stale: .*requirements.in changed.*nox -s lock"):
        check_fresh(lock, inputs_sha256(source), str(source))


def test_committed_locks_are_fresh() -> None:
    profile = load_profile("cpu")
    lock = parse_python_lock(REPO_ROOT / "lockfiles/cpu.txt")
    check_fresh(lock, inputs_sha256(profile.requirements_in), "requirements.in")
    names = lock.by_name()
    assert names["torch"].version == "2.13.0+cpu"
    assert "llama-cpp-python" in names and "transformers" in names and "peft" in names
    assert not [n for n in names if n.startswith("nvidia-")], (
        "the cpu profile must not pull CUDA wheels"
    )


def test_debian_lock_round_trip_and_compare(tmp_path: Path) -> None:
    profile = load_profile("cpu")
    packages = (
        DebianPackage("base-files", "12.4", "amd64", H1, 70000, "debian/pool/main/b/base-files/base-files_12.4_amd64.deb"),
        DebianPackage("python3", "3.11.2-1", "amd64", H2, 26000, "debian/pool/main/p/python3-defaults/python3_3.11.2-1_amd64.deb"),
    )  # fmt: skip
    path = tmp_path / "cpu.debian.lock"
    write_debian_lock(path, profile, packages, snapshot="20261202T120000Z")
    lock = read_debian_lock(path)
    assert lock.packages == packages and lock.snapshot == "20261202T120000Z"
    compare_packages(path, packages, packages)
    moved = (DebianPackage("base-files", "12.5", "amd64", H1), packages[1])
    with pytest.raises(FetchError, match=r"(?s)base-files: 12.4 -> 12.5.*nox -s lock"):
        compare_packages(path, packages, moved)


def test_debian_locks_of_the_older_four_field_form_still_read(tmp_path: Path) -> None:
    path = tmp_path / "cpu.debian.lock"
    path.write_text(f"# old\n{INPUTS_HEADER}{H1}\nbash 5.2.15-2+b13 amd64 {H2}\n")
    lock = read_debian_lock(path)
    assert lock.snapshot == "" and lock.packages == (
        DebianPackage("bash", "5.2.15-2+b13", "amd64", H2),
    )
    path.write_text(
        f"{INPUTS_HEADER}{H1}\nbash 5.2.15-2+b13 amd64 {H2} notasize debian/pool/x.deb\n"
    )
    with pytest.raises(LockError, match=r"cpu.debian.lock:2: expected"):
        read_debian_lock(path)


def test_committed_debian_locks_are_fresh_and_name_where_each_deb_lives() -> None:
    from gapforge.lock.debian import debian_inputs_sha256, debian_lock_path

    for name in ("cpu", "cuda"):
        profile = load_profile(name)
        for kind in ("base", "build"):
            lock = read_debian_lock(debian_lock_path(REPO_ROOT / "lockfiles", name, kind))
            assert lock.inputs_sha256 == debian_inputs_sha256(profile, kind), lock.path
            assert len(lock.snapshot) == 16 and lock.snapshot.endswith("Z")
            assert all(
                p.filename.split("/")[0] in ("debian", "debian-security") for p in lock.packages
            )
            assert all(
                p.size > 0 and p.filename.rsplit("/", 1)[1].startswith(p.name + "_")
                for p in lock.packages
            )
            if kind == "build":
                names = {p.name for p in lock.packages}
                assert {
                    "gcc-12",
                    "g++-12",
                    "libc6-dev",
                    "python3.11-dev",
                    "python3.11-venv",
                } <= names


# --- models -----------------------------------------------------------------------------------------


def _hf_folder(root: Path, weights: str = "model.safetensors") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "tokenizer.json").write_text("{}")
    (root / weights).write_bytes(b"weights")
    return root


def test_pickle_only_model_is_refused_with_the_fix() -> None:
    with pytest.raises(
        ModelSourceError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors"
    ):
        select_model_files(["config.json", "tokenizer.json", "pytorch_model.bin"], "org/model@abc")


def test_pickles_beside_safetensors_are_left_out() -> None:
    chosen = select_model_files(
        ["config.json", "tokenizer.json", "model.safetensors", "pytorch_model.bin", "README.md"],
        "x",
    )
    assert chosen == ["config.json", "model.safetensors", "tokenizer.json"]


def test_local_model_lock_and_staleness(tmp_path: Path) -> None:
    folder = _hf_folder(tmp_path / "model")
    spec = ModelSpec.model_validate({"id": "tiny", "source": {"type": "local", "path": "model"}})
    lock = lock_local(spec, tmp_path / "locks", folder)
    assert {f.path: f.sha256 for f in lock.files}["model.safetensors"] == sha256_file(
        folder / "model.safetensors"
    )
    assert read_model_lock(tmp_path / "locks", spec).files == lock.files
    moved = ModelSpec.model_validate(
        {"id": "tiny", "source": {"type": "local", "path": "elsewhere"}}
    )
    with pytest.raises(LockError, match="is stale"):
        read_model_lock(tmp_path / "locks", moved)


class FakeHub:
    """A Hub served from a local folder: the locking logic is what is under test, not the Hub."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads: list[str] = []

    def list_files(self, repo: str, revision: str) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())

    def download(self, repo: str, revision: str, filename: str, dest: Path) -> Path:
        self.downloads.append(filename)
        target = dest / filename
        target.write_bytes((self.root / filename).read_bytes())
        return target


def test_hf_lock_takes_only_safe_files_at_the_pinned_commit(tmp_path: Path) -> None:
    repo = _hf_folder(tmp_path / "repo")
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "README.md").write_text("card")
    spec = ModelSpec.model_validate(
        {"id": "org-model", "source": {"type": "hf", "repo": "org/model", "revision": "0" * 40}}
    )
    hub = FakeHub(repo)
    lock = lock_hf(spec, tmp_path / "locks", Cache(tmp_path / "cache"), hub)
    assert sorted(hub.downloads) == ["config.json", "model.safetensors", "tokenizer.json"]
    data = json.loads(lock.path.read_text())
    assert data["source"]["revision"] == "0" * 40
    assert [f["path"] for f in data["files"]] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_hf_source_needs_a_full_commit() -> None:
    with pytest.raises(ValueError, match="pattern"):
        ModelSpec.model_validate(
            {"id": "m", "source": {"type": "hf", "repo": "org/m", "revision": "main"}}
        )


# --- the cache ------------------------------------------------------------------------------------


def test_corrupted_cache_entry_is_detected_and_dropped(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    source = tmp_path / "f.whl"
    source.write_bytes(b"wheel bytes")
    stored = cache.put_file(source, allowed={sha256_file(source)})
    digest = stored.parent.name
    assert cache.find_file(digest) == stored
    stored.write_bytes(b"wheel bytes, flipped")
    assert cache.find_file(digest) is None
    assert not stored.exists()
    assert cache.corrupt == [stored]


def test_put_refuses_bytes_that_are_not_locked(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    source = tmp_path / "f.whl"
    source.write_bytes(b"x")
    with pytest.raises(ValueError, match="not one of the locked hashes"):
        cache.put_file(source, allowed={H1})


def test_interrupted_writes_leave_nothing_trusted(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with cache.tempdir() as work:
        (work / "half.tar").write_bytes(b"partial")
    (cache.root / "tmp" / "killed-run").mkdir()  # no owner file, and old: left by a dead run
    os.utime(cache.root / "tmp" / "killed-run", (0, 0))
    cache.clear_stale_tmp()
    assert list((cache.root / "tmp").iterdir()) == []
    assert not cache.has_blob("sha256:" + H1)


def test_one_unlockable_model_does_not_stop_the_others(tmp_path: Path) -> None:
    from gapforge.lock.update import lock_recipe_models

    good, bad = tmp_path / "good", tmp_path / "bad"
    _hf_folder(good / "model")
    (bad / "model").mkdir(parents=True)  # pickle weights only: refused when locked
    (bad / "model/config.json").write_text("{}")
    (bad / "model/pytorch_model.bin").write_bytes(b"pickle")
    for folder, model_id in ((good, "good-model"), (bad, "bad-model")):
        (folder / "r.yaml").write_text(
            "# Build: nox -s build -- r.yaml\n"
            f"name: r-{model_id}\nversion: 0.0.1\nprofile: cpu\n"
            f"model: {{id: {model_id}, source: {{type: local, path: model}}}}\n"
            "data: {format: completion, sample: data.jsonl}\nlora: {r: 4, alpha: 8}\n"
            "train: {max_steps: 1, learning_rate: 0.001}\nquantize: [gguf:q8_0]\n"
        )
        (folder / "data.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(LockError) as caught:
        lock_recipe_models(
            [bad / "r.yaml", good / "r.yaml"], tmp_path / "locks", Cache(tmp_path / "cache")
        )
    assert "1 of 2 model locks" in str(caught.value) and str(bad / "r.yaml") in str(caught.value)
    assert (tmp_path / "locks/models/good-model.json").is_file()
    assert not (tmp_path / "locks/models/bad-model.json").exists()


def test_committed_serve_lock_is_fresh_and_in_step_with_the_profile() -> None:
    from gapforge.lock.serve import read_serve_lock

    profile = load_profile("cpu")
    lock = read_serve_lock(profile, REPO_ROOT / "lockfiles", "llama.cpp")
    names = lock.by_name()
    cpu = parse_python_lock(REPO_ROOT / "lockfiles/cpu.txt").by_name()
    # the same pin (and so the same sdist, and the same wheel built from it) as the training image
    assert names["llama-cpp-python"] == cpu["llama-cpp-python"]
    assert {"fastapi", "uvicorn", "sse-starlette", "starlette-context", "pydantic-settings"} <= set(
        names
    )
    assert "torch" not in names


def test_serve_lock_goes_stale_when_the_profile_lock_changes(tmp_path: Path) -> None:
    import shutil

    from gapforge.lock.serve import read_serve_lock

    profile = load_profile("cpu")
    shutil.copy(REPO_ROOT / "lockfiles/cpu.serve-llama.cpp.txt", tmp_path)
    text = (REPO_ROOT / "lockfiles/cpu.txt").read_text()
    (tmp_path / "cpu.txt").write_text(
        text.replace("llama-cpp-python==0.3.36", "llama-cpp-python==0.3.35")
    )
    with pytest.raises(
        LockError, match=r"cpu.serve-llama.cpp.txt is stale: .*cpu.txt changed.*nox -s lock"
    ):
        read_serve_lock(profile, tmp_path, "llama.cpp")
