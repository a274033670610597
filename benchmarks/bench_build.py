"""Build figures: cold and warm build of a tiny recipe; layer writing against `docker save`, same run.

Run with `nox -s bench` (add `-- --skip-cold` to skip the cold build, which rebuilds llama.cpp).
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
TAR = Path("bench-tiny-0.0.1/image.tar")
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
    for name in ("cpu.txt", "cpu.build.txt", "cpu.debian.lock"):
        shutil.copy(REPO / "lockfiles" / name, root / "lockfiles" / name)
    loaded = load_recipe(path)
    lock_local(loaded.recipe.model, root / "lockfiles", loaded.local_model_path() or root)
    return path


def _build(recipe: Path, root: Path, cache: Path, out: Path, load: bool) -> tuple[float, dict]:
    command = [sys.executable, "-m", "gapforge.cli", "build", str(recipe), "--lock-dir", str(root / "lockfiles"),
               "--out", str(out), "--cache-dir", str(cache), "--no-pretest", *([] if load else ["--no-load"])]  # fmt: skip
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    return elapsed, json.loads((out / "bench-tiny-0.0.1" / "build.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gapforge-bench-"))
    try:
        recipe = _project(root)
        figures: dict[str, str] = {}
        if not args.skip_cold:
            cold, _ = _build(recipe, root, root / "cold-cache", root / "out-cold", load=False)
            figures["cold build (empty cache, no load)"] = f"{cold:8.1f} s"
            shutil.rmtree(root / "cold-cache")
        cache = default_cache_dir()
        _build(recipe, root, cache, root / "out-prime", load=True)  # fill the shared cache
        warm, report = _build(recipe, root, cache, root / "out-warm", load=True)
        figures["warm build (cached, with load + smoke)"] = f"{warm:8.1f} s"
        if not args.skip_cold:
            same = filecmp.cmp(root / "out-cold" / TAR, root / "out-warm" / TAR, shallow=False)
            figures["cold (empty cache) vs warm archive"] = "byte-identical" if same else "DIFFERENT"

        # Layer writing: rewrite every layer's tar from its cached blob's members, timed.
        store = Cache(cache)
        layers = [Layer(x["name"], x["digest"], x["size"], store.blob_path(x["digest"])) for x in report["layers"]]
        total = sum(layer.size for layer in layers)
        import tarfile

        from gapforge.oci.tar import Entry

        start = time.monotonic()
        for layer in layers:
            with tarfile.open(layer.path) as tar:
                entries = []
                for m in tar.getmembers():
                    kind = "dir" if m.isdir() else "symlink" if m.issym() else "hardlink" if m.islnk() else "file"
                    if kind == "file":
                        entries.append(Entry(m.name.rstrip("/"), "file", m.mode, m.uid, m.gid, size=m.size,
                                             opener=lambda m=m, tar=tar: tar.extractfile(m)))  # fmt: skip
                    else:
                        entries.append(Entry(m.name.rstrip("/"), kind, m.mode, m.uid, m.gid, linkname=m.linkname))
                write_tar_file(entries, root / "rewrite.tar", 0)
        ours = time.monotonic() - start
        start = time.monotonic()
        subprocess.run(["docker", "save", "-o", str(root / "saved.tar"), report["image"]["ref"]], check=True)
        theirs = time.monotonic() - start
        saved = (root / "saved.tar").stat().st_size
        figures["image size (uncompressed layers)"] = f"{total / 1e6:8.1f} MB"
        figures["gapforge layer writing"] = f"{total / 1e6 / ours:8.1f} MB/s ({ours:.1f} s)"
        figures["docker save of the same image"] = f"{saved / 1e6 / theirs:8.1f} MB/s ({theirs:.1f} s)"
        figures["ratio (gapforge / docker save)"] = f"{(total / ours) / (saved / theirs):8.2f} x"
        print("\ngapforge build benchmark (tiny recipe, cpu profile)")
        for key, value in figures.items():
            print(f"  {key:<42} {value}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
