"""Build figures: the default recipe built from an empty cache (how much of it the sdist build in the
locked Debian root takes) and rebuilt warm; a tiny recipe rebuilt warm, unchanged, up to the pretest
(load and smoke run included); layer writing against `docker save` and `sha256sum` on one core.

Goals (issue 15, item 4): layer writing at least 10x `docker save`'s MB/s, or 70 % of `sha256sum`'s
on one core where that is lower; the warm rebuild under 10 s.

Run with `nox -s bench` (add `-- --skip-cold` to skip the cold build: it fetches every input and
compiles llama.cpp, 10+ minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gapforge.cache import Cache, default_cache_dir  # noqa: E402
from gapforge.oci.image import Layer  # noqa: E402
from gapforge.oci.tar import write_tar_file  # noqa: E402


def _project(root: Path) -> Path:
    import yaml

    from gapforge.lock.model import lock_local
    from gapforge.recipe import load_recipe
    from tests.integration.conftest import make_tiny_model  # the same tiny model the tests build

    make_tiny_model(root / "recipes/tiny/model")
    (root / "recipes/tiny/data").mkdir()
    (root / "recipes/tiny/data/sample.jsonl").write_text('{"text": "the desk answers"}\n' * 10)
    recipe = {
        "name": "bench-tiny", "version": "0.0.1", "profile": "cpu",
        "model": {"id": "bench-tiny", "source": {"type": "local", "path": "model"}},
        "data": {"format": "completion", "sample": "data/sample.jsonl"},
        "lora": {"r": 4, "alpha": 8}, "train": {"max_steps": 1, "learning_rate": 1e-3},
        "quantize": ["gguf:q8_0"],
    }  # fmt: skip
    path = root / "recipes/tiny/tiny.yaml"
    path.write_text("# Build: nox -s build -- recipes/tiny/tiny.yaml\n" + yaml.safe_dump(recipe))
    (root / "lockfiles").mkdir()
    for name in ("cpu.txt", "cpu.build.txt", "cpu.debian.lock", "cpu.build.debian.lock"):
        shutil.copy(REPO / "lockfiles" / name, root / "lockfiles" / name)
    loaded = load_recipe(path)
    lock_local(loaded.recipe.model, root / "lockfiles", loaded.local_model_path() or root)
    return path


def _build(
    recipe: Path, lock_dir: Path, cache: Path, out: Path, load: bool, name: str = "bench-tiny-0.0.1"
) -> tuple[float, dict]:
    command = [sys.executable, "-m", "gapforge.cli", "build", str(recipe), "--lock-dir", str(lock_dir), "--frozen",
               "--out", str(out), "--cache-dir", str(cache), "--no-pretest", *([] if load else ["--no-load"])]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    return elapsed, json.loads((out / name / "build.json").read_text())


def _cold_default(root: Path, figures: dict[str, str]) -> None:
    """The default recipe from an empty cache, then again warm on that cache: times and bytes."""
    recipe = REPO / "recipes/smollm2/lora-q8-q4.yaml"
    name = "smollm2-135m-desk-0.1.0"
    cold, report = _build(recipe, REPO / "lockfiles", root / "cold-cache", root / "out-cold", False, name)
    timings = report["timings_s"]
    sdist = report["sdist_build_s"]
    figures["default recipe, cold build (empty cache, no load)"] = f"{cold:8.1f} s"
    figures["  of which fetch (downloads, .debs, model import)"] = f"{timings['fetch'] - sdist:8.1f} s"
    figures["  of which sdist builds in the locked Debian root"] = f"{sdist:8.1f} s ({100 * sdist / cold:.0f} %)"
    figures["  of which assembling the image"] = f"{timings['assemble']:8.1f} s"
    warm, _ = _build(recipe, REPO / "lockfiles", root / "cold-cache", root / "out-warm", False, name)
    figures["default recipe, warm rebuild (same cache, no load)"] = f"{warm:8.1f} s"
    tar = Path(name) / "image.tar"
    same = filecmp.cmp(root / "out-cold" / tar, root / "out-warm" / tar, shallow=False)
    figures["cold vs warm archive"] = "byte-identical" if same else "DIFFERENT"
    shutil.rmtree(root / "cold-cache")


def _rate(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def _layer_writing(store: Cache, report: dict, root: Path, figures: dict[str, str]) -> None:
    """Rewrite every layer of the image from its cached blob's members (listed first, untimed),
    each to disk, timed; then `docker save` of the same image and `sha256sum` (one core) of the
    same layer bytes."""
    import tarfile

    from gapforge.oci.tar import Entry

    layers = [Layer(x["name"], x["digest"], x["size"], store.blob_path(x["digest"])) for x in report["layers"]]
    total = sum(layer.size for layer in layers)
    kinds = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "chardev",
             tarfile.BLKTYPE: "blockdev", tarfile.FIFOTYPE: "fifo"}  # fmt: skip
    ours = 0.0
    same = True
    for layer in layers:
        with tarfile.open(layer.path) as tar:
            entries, mtimes = [], set()
            for m in tar.getmembers():
                kind = kinds.get(m.type, "file")
                mtimes.add(m.mtime)
                if kind == "file":
                    entries.append(Entry(m.name.rstrip("/"), "file", m.mode, m.uid, m.gid, size=m.size,
                                         opener=lambda m=m, tar=tar: tar.extractfile(m)))  # fmt: skip
                else:
                    entries.append(Entry(m.name.rstrip("/"), kind, m.mode, m.uid, m.gid, linkname=m.linkname,
                                         devmajor=m.devmajor, devminor=m.devminor))  # fmt: skip
            start = time.monotonic()
            written = write_tar_file(entries, root / "rewrite.tar", mtimes.pop() if len(mtimes) == 1 else 0)
            ours += time.monotonic() - start
            same = same and written.digest == layer.digest
            (root / "rewrite.tar").unlink()
    start = time.monotonic()
    subprocess.run(["docker", "save", "-o", str(root / "saved.tar"), report["image"]["ref"]], check=True)
    theirs = time.monotonic() - start
    saved = (root / "saved.tar").stat().st_size
    (root / "saved.tar").unlink()
    start = time.monotonic()  # the layers are in the page cache: this is sha256sum's hashing speed
    subprocess.run(["sha256sum", *(str(layer.path) for layer in layers)], check=True, stdout=subprocess.DEVNULL)
    hashing = time.monotonic() - start
    mine, docker, sha = _rate(total, ours), _rate(saved, theirs), _rate(total, hashing)
    goal = min(10 * docker, 0.7 * sha)
    figures["image size (uncompressed layers)"] = f"{total / 1e6:8.1f} MB"
    figures["gapforge layer writing (to disk, hashed)"] = f"{mine:8.1f} MB/s ({ours:.1f} s)"
    figures["  rewritten layers byte-identical to the cache's"] = "yes" if same else "NO"
    figures["docker save of the same image"] = f"{docker:8.1f} MB/s ({theirs:.1f} s)"
    figures["sha256sum of the same layers (one core)"] = f"{sha:8.1f} MB/s ({hashing:.1f} s)"
    figures["ratio (gapforge / docker save)"] = f"{mine / docker:8.2f} x"
    figures["ratio (gapforge / sha256sum, one core)"] = f"{mine / sha:8.2f} x"
    figures["goal: min(10 x docker save, 0.7 x sha256sum)"] = (
        f"{goal:8.1f} MB/s   {'met' if mine >= goal else 'NOT MET'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gapforge-bench-"))
    try:
        recipe = _project(root)
        figures: dict[str, str] = {}
        if not args.skip_cold:
            _cold_default(root, figures)
        cache = default_cache_dir()
        locks = root / "lockfiles"
        _build(recipe, locks, cache, root / "out-prime", load=True)  # fill the shared cache
        warm, report = _build(recipe, locks, cache, root / "out-tiny-warm", load=True)
        figures["tiny recipe, warm rebuild, unchanged (load + smoke, no pretest)"] = (
            f"{warm:8.1f} s   goal < 10 s: {'met' if warm < 10 else 'NOT MET'}"
        )
        _layer_writing(Cache(cache), report, root, figures)
        print("\ngapforge build benchmark (cpu profile)")
        for key, value in figures.items():
            print(f"  {key:<48} {value}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
