"""Media split/join throughput and parity: gapforge (zfec, per-block hashes) against coreutils
`split -b`/`cat` and Debian's `par2 create`/`par2 repair`, on the same data in the same run.

    python benchmarks/bench_transfer.py [--bundle DIR] [--size-mb N] [--parity N] [--parts K]

The data: the first N MB of the bundle's image.tar (random bytes when there is no bundle), in a
small synthetic bundle folder; it is cut into K data parts plus N parity parts (the same overhead
for par2: -r = 100 * N / K percent). Repair: one data part deleted, one block of another flipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gapforge.bundle.sign import write_key_pair
from gapforge.operator.join import join_parts
from gapforge.release_manager.split import split_bundle, write_parity

ROOT = Path(__file__).resolve().parent.parent
REAL = next(iter(sorted((ROOT / "dist").glob("*/bundle.json"))), ROOT / "dist" / "none").parent
"""The newest-named bundle in dist/ (`make build` writes the default recipe's there)."""


def make_bundle(root: Path, source: Path | None, size: int, key_dir: Path) -> tuple[Path, object]:
    key = write_key_pair(key_dir / "bench.key")
    root.mkdir(parents=True)
    with open(root / "image.tar", "wb") as out:
        if source is not None and source.is_file():
            with open(source, "rb") as src:
                out.write(src.read(size))
        else:
            out.write(os.urandom(size))
    index = {"name": "bench", "version": "0.0.0", "signing_key": {"fingerprint": key.fingerprint}}
    (root / "bundle.json").write_text(json.dumps(index))
    (root / "signing-key.pub.pem").write_bytes(key.public_pem)
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root)}"
        for p in sorted(root.iterdir())
    ]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root, key


def timed(label: str, fn, size: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    print(f"  {label:<44} {seconds:7.2f} s  {size / seconds / 1e6:8.1f} MB/s", flush=True)
    return seconds


def sh(*command: str, cwd: Path | None = None) -> None:
    subprocess.run(
        command, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def flip(path: Path, offset: int) -> None:
    if not path.is_file():  # fewer than 3 data parts (a tiny --size-mb)
        return
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def bench_delta(bundle: Path, work: Path) -> None:
    """A recipe-only change, as the site sees it: the site holds every blob and file of the bundle
    but the recipe layer (its inventory with that layer taken out). The delta against it, and the
    rebuild inside, against copying the whole bundle (`cp -r`) in the same run."""
    from gapforge.operator.inventory import make_inventory, write_inventory
    from gapforge.operator.rebuild import rebuild_bundle
    from gapforge.release_manager.delta import against_inventory, make_delta

    index = json.loads((bundle / "bundle.json").read_text())
    recipe = next(layer for layer in index["image"]["layers"] if layer["name"] == "recipe")
    inventory = make_inventory([bundle])
    inventory["blobs"].pop(recipe["digest"], None)
    key = write_key_pair(work / "operator.key")
    write_inventory(inventory, key, work / "inventory.json")
    full = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"delta: a recipe-only change of {bundle.name} (the site lacks only the recipe layer, "
          f"{recipe['size']} B)")
    start = time.monotonic()
    result = make_delta(bundle, against_inventory(work / "inventory.json"), work / "delta")
    made = time.monotonic() - start
    print(f"  {'gapforge delta':<44} {made:7.2f} s  {result.delta_bytes:>13,} B "
          f"({result.delta_bytes / full * 100:.3f} % of {full:,} B; recipe layer + "
          f"{result.delta_bytes - recipe['size']:,} B)")
    t_copy = timed("cp -r of the full bundle (the plain way)",
                   lambda: sh("cp", "-r", str(bundle), str(work / "copy")), full)
    t_rebuild = timed("gapforge rebuild inside (delta + site's bundle)",
                      lambda: rebuild_bundle(result.path, [bundle], work / "inside"), full)
    print(f"  ratio bytes carried full/delta: {full / result.delta_bytes:.0f}x; "
          f"rebuild/cp time: {t_rebuild / t_copy:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=REAL)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--parts", type=int, default=8, help="data parts (K)")
    parser.add_argument("--parity", type=int, default=2, help="parity parts (N)")
    parser.add_argument("--block-size", type=int, default=1024 * 1024)
    args = parser.parse_args()
    size = args.size_mb * 1_000_000
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    try:
        source = args.bundle / "image.tar" if args.bundle else None
        bundle, key = make_bundle(work / "bench-0.0.0", source, size, work / "keys")
        what = f"{source} (first {args.size_mb} MB)" if source and source.is_file() else "random"
        medium = str(int((size + 20_000) / args.parts * 1.02) + 2 * 1024 * 1024)
        print(f"data: {what}; K={args.parts} data + N={args.parity} parity; medium {medium} B")
        n = args.parity
        out0 = work / "cut"
        print("split")
        t_cut = timed(
            "gapforge split, data parts only (tar+hash)",
            lambda: split_bundle(bundle, out0, medium, 0, key, args.block_size),  # type: ignore[arg-type]
            size,
        )
        from gapforge.bundle.split_manifest import MANIFEST_NAME, open_manifest

        manifest, _ = open_manifest(
            (out0 / "disc-01" / MANIFEST_NAME).read_bytes(),
            "bench",
            [key.private.public_key()],  # type: ignore[attr-defined]
        )
        stream_bytes, k = manifest.stream_size, manifest.k
        print(f"  {k} data parts of {manifest.part_size} B, stream {stream_bytes} B")
        parts = [out0 / p.medium / p.file for p in manifest.data_parts]
        stream = work / "stream.tar"
        with open(stream, "wb") as sink:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, sink, 1 << 20)
        plain = work / "plain"
        plain.mkdir()
        t_split = timed(
            "coreutils split -b",
            lambda: sh("split", "-b", str(manifest.part_size), str(stream), "p-", cwd=plain),
            stream_bytes,
        )
        print(f"  ratio gapforge/split-b: {t_cut / t_split:.1f}x the time")
        print("parity encode")
        t_enc = timed(
            f"zfec {k}+{n}, per-block sha256",
            lambda: write_parity(out0, manifest.data_parts, n, args.block_size),
            stream_bytes,
        )
        full = work / "full"
        timed(
            "gapforge split end to end (tar, hash, parity)",
            lambda: split_bundle(bundle, full, medium, n, key, args.block_size),  # type: ignore[arg-type]
            stream_bytes,
        )
        print("join")
        t_join = timed(
            "gapforge join (check blocks, unpack, sha256)",
            lambda: join_parts([full], work / "joined1", [key.private.public_key()]),  # type: ignore[attr-defined]
            stream_bytes,
        )
        t_cat = timed(
            "cat parts > stream",
            lambda: subprocess.run(
                f"cat {' '.join(str(p) for p in sorted(plain.iterdir()))} > {work / 'cat.tar'}",
                shell=True,
                check=True,
            ),
            stream_bytes,
        )
        print(f"  ratio gapforge join/cat: {t_join / t_cat:.1f}x the time")
        (full / "disc-02" / "data-02.part").unlink()
        flip(full / "disc-03" / "data-03.part", manifest.part_size // 2 + 7)
        t_rep = timed(
            "gapforge join, 1 part lost + 1 block corrupt",
            lambda: join_parts([full], work / "joined2", [key.private.public_key()]),  # type: ignore[attr-defined]
            stream_bytes,
        )
        print("par2 (same data parts, same overhead)")
        if shutil.which("par2") is None:
            print("  par2: not installed (apt-get install -y par2)")
            return 0
        pdir = work / "par2"
        shutil.copytree(out0, pdir)
        files = sorted(str(p) for p in pdir.glob("disc-*/data-*.part"))
        percent = str(round(100 * n / k))
        t_pc = timed(
            f"par2 create -r{percent}",
            lambda: sh("par2", "create", "-q", f"-r{percent}", str(pdir / "set.par2"), *files),
            stream_bytes,
        )
        Path(files[1 % len(files)]).unlink()
        flip(Path(files[2 % len(files)]), manifest.part_size // 2 + 7)
        t_pr = timed(
            "par2 repair (1 part lost + 1 block corrupt)",
            lambda: sh("par2", "repair", "-q", str(pdir / "set.par2")),
            stream_bytes,
        )
        print(f"  ratio par2/zfec: encode {t_pc / t_enc:.1f}x, repair {t_pr / t_rep:.1f}x the time")
        if args.bundle and (args.bundle / "bundle.json").is_file():
            bench_delta(args.bundle, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
