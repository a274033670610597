"""Where GPTQ's time goes (device tool, exploratory): GPTQ INT4 of an 8B-shaped Llama with a few layers,
under cProfile, with the runtime's settings (GPTQModel torch paths, JIT extensions off)."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gptq-probe"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="QuantizeConfig field=value (json)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE")
    parser.add_argument("--backend", default="gptq_torch")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("GPTQMODEL_DISABLE_GPTQ_CUDA", "1")
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "4")
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    import torch
    from bench_gpu import SHAPES, write_model

    shape = dict(SHAPES["8b"], num_hidden_layers=args.layers)
    model_dir = args.work / f"model-{args.layers}"
    if not (model_dir / "config.json").is_file():
        shutil.rmtree(model_dir, ignore_errors=True)
        started = time.monotonic()
        write_model(model_dir, shape, "cuda")
        print(f"[probe] model of {args.layers} layers written in {time.monotonic() - started:.1f}s", flush=True)
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    settings = {"bits": 4, "group_size": 128, "desc_act": False, "damp_percent": 0.05, "offload_to_disk": False}
    for item in args.set:
        name, _, value = item.partition("=")
        settings[name] = json.loads(value)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, shape["vocab_size"], (args.samples, args.seq), generator=generator).tolist()
    calibration = [{"input_ids": i, "attention_mask": [1] * len(i)} for i in ids]
    started = time.monotonic()
    model = GPTQModel.load(str(model_dir), QuantizeConfig(**settings), trust_remote_code=False)
    loaded = time.monotonic()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    model.quantize(calibration, batch_size=args.batch, backend=BACKEND(args.backend))
    torch.cuda.synchronize()
    if profiler:
        profiler.disable()
    done = time.monotonic()
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    model.save(str(out))
    saved = time.monotonic()
    figures = {
        "layers": args.layers, "settings": settings, "env": args.env, "backend": args.backend,
        "calibration": f"{args.samples} x {args.seq}", "load_s": round(loaded - started, 1),
        "quantize_s": round(done - loaded, 1), "save_s": round(saved - done, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }  # fmt: skip
    print("[probe] " + json.dumps(figures), flush=True)
    if profiler:
        for key in ("cumulative", "tottime"):
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats(key).print_stats(28)
            print(stream.getvalue()[-9000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
