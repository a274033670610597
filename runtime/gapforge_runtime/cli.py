"""The runtime's command line: the entrypoint of every sealed image."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gapforge_runtime import __version__
from gapforge_runtime.errors import EXIT_GATE_FAILED, EXIT_USAGE, RuntimeFailure
from gapforge_runtime.export.gguf_import import DTYPES
from gapforge_runtime.launch.nodes import DEFAULT_PORT, nodes_from_args
from gapforge_runtime.offline import force_offline

if TYPE_CHECKING:
    from gapforge_runtime.pipeline import RunContext

RECIPE_ENV = "GAPFORGE_RECIPE"
DEFAULT_RECIPE = "/opt/gapforge/recipe/recipe.json"
REPORTED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "llama_cpp_python", "gguf", "bitsandbytes", "gptqmodel",
)  # fmt: skip


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def load_recipe(path: str | None = None) -> dict[str, object] | None:
    """Read the recipe the image was built for (JSON written by the builder), if any."""
    recipe_path = Path(path or os.environ.get(RECIPE_ENV, DEFAULT_RECIPE))
    if not recipe_path.is_file():
        return None
    data: dict[str, object] = json.loads(recipe_path.read_text(encoding="utf-8"))
    return data


def cmd_info(args: argparse.Namespace) -> int:
    """Print the versions of python and the ML stack, how Triton gets its launcher, and the recipe
    this image was built for."""
    from gapforge_runtime.triton_launcher import how_triton_builds

    recipe = load_recipe(args.recipe)
    info: dict[str, object] = {
        "runtime": __version__,
        "python": platform.python_version(),
        "packages": {name: _package_version(name) for name in REPORTED_PACKAGES},
        "recipe": None
        if recipe is None
        else {"name": recipe.get("name"), "version": recipe.get("version")},
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
        "triton_launcher": how_triton_builds(),
    }
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"gapforge-runtime {__version__}")
    print(f"python        {info['python']}")
    for name, version in info["packages"].items():  # type: ignore[attr-defined]
        print(f"{name:<13} {version}")
    print(f"triton        {info['triton_launcher'] or 'no launcher: no flex attention, no Liger'}")
    if recipe is None:
        print("recipe        (none: not running inside a sealed image)")
    else:
        print(f"recipe        {recipe.get('name')} {recipe.get('version')}")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    """Dequantize a GGUF model into a Hugging Face folder with safetensors."""
    from gapforge_runtime.export.gguf_import import import_gguf

    import_gguf(Path(args.gguf), Path(args.out), force=args.force, dtype=args.dtype)
    return 0


STEP_HELP = {
    "run": "the whole recipe: validate data, train, merge, quantize, evaluate, report",
    "data": "validate the data (every bad line listed), dedupe and split it",
    "train": "train the LoRA adapter (--resume continues after an interruption)",
    "merge": "merge the adapter into the base model (safetensors)",
    "quantize": "write GGUF f16 and the recipe's quantizations, the adapter GGUF, Modelfiles",
    "eval": "score base, merged and GGUF models on the test split; apply the gates",
}


def _context(args: argparse.Namespace) -> RunContext:
    from gapforge_runtime.config import (
        DEFAULT_LLAMA_CPP,
        DEFAULT_MODEL,
        LLAMA_CPP_ENV,
        MODEL_ENV,
        OUT_ENV,
        load_recipe_settings,
    )
    from gapforge_runtime.outputs import Layout
    from gapforge_runtime.pipeline import RunContext

    recipe = load_recipe_settings(args.recipe)
    out = Path(args.out or os.environ.get(OUT_ENV) or "outputs").resolve()
    base = Path(args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL).resolve()
    parent = None
    if getattr(args, "parent", None):
        from gapforge_runtime.methods.continual import load_parent

        parent = load_parent(Path(args.parent).resolve())
    llama_cpp = args.llama_cpp or os.environ.get(LLAMA_CPP_ENV) or DEFAULT_LLAMA_CPP
    return RunContext(
        recipe=recipe,
        model_dir=parent.merged if parent is not None else base,
        data_file=Path(args.data).resolve() if args.data else recipe.sample,
        out=Layout(out),
        llama_cpp=Path(llama_cpp),
        validation_file=Path(args.validation).resolve() if args.validation else None,
        test_file=Path(args.test).resolve() if args.test else None,
        force=args.force,
        resume=getattr(args, "resume", False),
        nproc=getattr(args, "nproc", None) or recipe.train.nproc,
        nodes=nodes_from_args(
            getattr(args, "nnodes", None),
            getattr(args, "node_rank", None),
            getattr(args, "rdzv_endpoint", None),
            getattr(args, "rdzv_id", None),
            recipe.train.nnodes,
            getattr(args, "rdzv_timeout", None),
        ),
        parent=parent,
        base_dir=base if parent is not None else None,
    )


def cmd_step(args: argparse.Namespace) -> int:
    """Run one step (or all of them, for `run`), then rewrite the manifest and the report."""
    from gapforge_runtime import pipeline
    from gapforge_runtime.preflight import check_hardware
    from gapforge_runtime.report.manifest import write_manifest_and_report

    if getattr(args, "sweep", False):
        return cmd_sweep(args)
    ctx = _context(args)
    # Before any work: a GPU-only method or target on a machine without a GPU stops here.
    # `train` checks the quantize targets too: better refused now than after hours of training.
    checked = {"run": ("train", "quantize"), "train": ("train", "quantize")}.get(
        args.command, (args.command,)
    )
    check_hardware(ctx.recipe.train.adapter_method, ctx.recipe.quantize, checked, ctx.nproc)
    pipeline.prepare(ctx)
    steps = {
        "data": [pipeline.step_data],
        "train": [pipeline.step_train],
        "merge": [pipeline.step_merge],
        "quantize": [pipeline.step_quantize],
        "eval": [pipeline.step_eval],
        # train runs (or confirms) the data step itself.
        "run": [
            pipeline.step_train,
            pipeline.step_merge,
            pipeline.step_quantize,
            pipeline.step_eval,
        ],
    }[args.command]
    if ctx.nodes.multi and not ctx.nodes.lead and args.command in ("run", "train"):
        # Every node trains; node 0 finishes the run (merge, quantize, evaluate, report).
        steps = [pipeline.step_train]
    elif args.command == "run":
        # Fail before hours of training, not after: the converter must be there for quantize.
        from gapforge_runtime.export.quantize import check_llama_cpp

        check_llama_cpp(ctx.llama_cpp)
    if ctx.recipe.train.method == "distill":  # the teacher's answers, then the student's adapter
        from gapforge_runtime.methods.distill import step_train_distilled

        steps = [step_train_distilled if s is pipeline.step_train else s for s in steps]
    with pipeline.observed_run(
        ctx, tracking=not args.no_tracking, metrics_port=getattr(args, "metrics_port", None)
    ):
        for step in steps:
            step(ctx)
        if ctx.nodes.multi and not ctx.nodes.lead and args.command in ("run", "train"):
            print(
                f"node {ctx.nodes.node_rank} of {ctx.nodes.nnodes}: training done; its adapter and "
                f"checkpoints are in {ctx.out.root}. Node 0 merges, quantizes, evaluates and writes "
                "the report in its own output folder."
            )
            return 0
        manifest = write_manifest_and_report(ctx)
    print(f"outputs in {ctx.out.root} (manifest.json, report.md, report.html)")
    return _verdict(manifest["passed"], gated=args.command in ("run", "eval"))


def _verdict(passed: bool | None, gated: bool = True) -> int:
    """Say the gates' verdict; the exit status: EXIT_GATE_FAILED for a failed gate where `gated`."""
    if gated and passed is False:
        print("verdict: FAIL (a gate failed; see report.md)", file=sys.stderr)
        return EXIT_GATE_FAILED
    if passed:
        print("verdict: PASS")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """The recipe's sweep (trials in their own processes), then the best trial merged, quantized, evaluated."""
    from gapforge_runtime import pipeline
    from gapforge_runtime.export.quantize import check_llama_cpp
    from gapforge_runtime.launch.sweep import check_recipe, run_sweep
    from gapforge_runtime.preflight import check_hardware, check_targets
    from gapforge_runtime.report.manifest import write_manifest_and_report

    ctx = _context(args)
    check_recipe(ctx.recipe)
    check_hardware(ctx.recipe.train.adapter_method, ctx.recipe.quantize, ("train", "quantize"), 1)
    check_targets(ctx.recipe.quantize)
    pipeline.prepare(ctx)
    check_llama_cpp(ctx.llama_cpp)  # before hours of trials, not after
    best = run_sweep(ctx, args.trials, args.parallel)
    with pipeline.observed_run(best, tracking=not args.no_tracking):
        for step in (pipeline.step_merge, pipeline.step_quantize, pipeline.step_eval):
            step(best)
        manifest = write_manifest_and_report(best)
    print(f"outputs in {best.out.root} (manifest.json, report.md, report.html, sweep/sweep.json)")
    return _verdict(manifest["passed"])


def _add_sweep_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trials", type=int, help="trials to finish, counting those a resumed sweep already ran "
        "(default: the recipe's sweep.trials)",
    )  # fmt: skip
    parser.add_argument(
        "--parallel", type=int, help="trials at once, one process each (default: sweep.parallel)"
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """Estimate peak GPU memory of training before any weight is loaded, and whether it fits."""
    from gapforge_runtime import memplan
    from gapforge_runtime.config import DEFAULT_MODEL, MODEL_ENV, load_recipe_settings

    recipe = (
        load_recipe_settings(args.recipe)
        if (args.recipe or os.environ.get("GAPFORGE_RECIPE"))
        else None
    )
    source = Path(args.config or args.model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL)
    try:
        shape = memplan.ModelShape.from_config(memplan.read_config(source))
    except (OSError, KeyError, ValueError) as exc:
        raise RuntimeFailure(
            f"--model/--config {source}: cannot read the model's shape from config.json ({exc}). Pass a "
            "model folder or a config.json with vocab_size, hidden_size, num_hidden_layers, num_attention_heads."
        ) from None
    train = recipe.train if recipe else None
    training = memplan.TrainingShape(
        method=args.method or (train.adapter_method if train else "lora"),
        batch=args.batch or (train.batch_size if train else 1),
        seq=args.seq or (train.max_seq_length if train else 2048),
        rank=args.rank or (recipe.lora.r if recipe else 16),
        targets=recipe.lora.target_modules if recipe else "all-linear",
        gradient_checkpointing=args.gradient_checkpointing
        or bool(train and train.gradient_checkpointing),
        nproc=(args.nproc or (train.nproc if train else 1))
        * (args.nnodes or (train.nnodes if train else 1)),
        distributed=args.distributed
        or ("fsdp" if train and train.distributed == "fsdp" else "ddp"),
        fused_loss=args.fused_loss,
    )
    memory = (
        int(args.gpu_memory_gib * memplan.GiB)
        if args.gpu_memory_gib
        else memplan.gpu_memory_bytes()
    )
    plan = memplan.estimate(shape, training, memory)
    per_node = args.gpus_per_node or 8
    needed = memplan.nodes_needed(shape, training, memory, per_node) if memory else None
    if args.json:
        facts = plan.as_json()
        if memory:
            facts["nodes_needed"] = (
                {"nodes": needed[0], "gpus_per_node": per_node, "distributed": needed[1]}
                if needed
                else None
            )
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        print(memplan.describe(plan))
        if memory:
            print(memplan.describe_nodes(needed, per_node, memory))
        if memory is None:
            print("[plan] no GPU visible: pass --gpu-memory-gib to check the fit for a given GPU")
    return 0 if plan.fits is not False else EXIT_GATE_FAILED


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE or the image's)")
    parser.add_argument(
        "--model",
        help="base model folder, HF layout (default: $GAPFORGE_MODEL_DIR or /opt/gapforge/model)",
    )
    parser.add_argument("--data", help="JSONL data (default: the recipe's sample data)")
    parser.add_argument("--validation", help="your own validation split (JSONL, same format)")
    parser.add_argument("--test", help="your own test split (JSONL, same format)")
    parser.add_argument("--out", help="output folder (default: $GAPFORGE_OUT or ./outputs)")
    parser.add_argument(
        "--llama-cpp",
        help="llama.cpp scripts folder (default: $GAPFORGE_LLAMA_CPP or /opt/gapforge/llama.cpp)",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo finished steps; replace another run's outputs"
    )
    parser.add_argument(
        "--parent",
        metavar="OUT_OLD",
        help="continue from an earlier run: its output folder (checked against its manifest.json); "
        "training starts from its merged model, replays its data (data.replay_ratio) and is scored "
        "on its test set too",
    )
    parser.add_argument(
        "--no-tracking",
        action="store_true",
        help="no MLflow run in OUT/mlflow (by default every run is tracked there, on SQLite)",
    )


def _add_node_options(parser: argparse.ArgumentParser) -> None:
    """Training across nodes through torchrun's c10d rendezvous (gapforge_runtime.launch.nodes)."""
    group = parser.add_argument_group(
        "across nodes (every node runs the same command, its own --out)"
    )
    group.add_argument(
        "--nnodes", type=int, help="nodes in the job (default: the recipe's train.nnodes)"
    )
    group.add_argument(
        "--node-rank", type=int, help="this node's rank, 0 to nnodes-1 (0 finishes the run)"
    )
    group.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help=f"node 0's name and rendezvous port (default port {DEFAULT_PORT})",
    )
    group.add_argument(
        "--rdzv-id", help="the job's name, the same on every node (default: gapforge)"
    )
    group.add_argument("--rdzv-timeout", type=int, metavar="SECONDS",
                       help="how long a node waits for the others to join (default 900)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapforge-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print versions and the recipe this image was built for")
    info.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE or the image's)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=cmd_info)

    imp = sub.add_parser(
        "import-gguf", help="dequantize a GGUF model into an HF safetensors folder"
    )
    imp.add_argument("--gguf", required=True, help="the .gguf model file")
    imp.add_argument(
        "--out", required=True, help="the folder to write (config, tokenizer, weights)"
    )
    imp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    imp.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="stored dtype (auto: float32 for F32 GGUFs, bfloat16 for BF16, else float16)",
    )
    imp.set_defaults(func=cmd_import_gguf)

    plan = sub.add_parser("plan", help="estimate peak GPU memory of training and whether it fits")
    plan.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE)")
    plan.add_argument(
        "--model", help="model folder with config.json (default: $GAPFORGE_MODEL_DIR)"
    )
    plan.add_argument("--config", help="a config.json instead of a model folder")
    plan.add_argument(
        "--method", choices=["full", "lora", "qlora"], help="override the recipe's train.method"
    )
    plan.add_argument("--batch", type=int, help="micro-batch size per GPU")
    plan.add_argument("--seq", type=int, help="sequence length")
    plan.add_argument("--rank", type=int, help="LoRA rank")
    plan.add_argument(
        "--gradient-checkpointing", action="store_true", help="assume activation recomputation"
    )
    plan.add_argument(
        "--fused-loss",
        action="store_true",
        help="assume Liger's fused linear cross-entropy (the train step's default on CUDA)",
    )
    plan.add_argument("--nproc", type=int, help="GPUs per node the run is spread over")
    plan.add_argument(
        "--nnodes", type=int, help="nodes the run is spread over (GPUs: nnodes x nproc)"
    )
    plan.add_argument(
        "--gpus-per-node",
        type=int,
        help="GPUs of one node, to say how many nodes are needed (default 8)",
    )
    plan.add_argument("--distributed", choices=["ddp", "fsdp"], help="how the GPUs share the model")
    plan.add_argument(
        "--gpu-memory-gib", type=float, help="memory of one GPU (default: the visible GPU's)"
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=cmd_plan)

    sweep = sub.add_parser(
        "sweep",
        help="the recipe's hyper-parameter sweep, then the best trial merged, quantized, evaluated",
        description="Optuna trials over the recipe's sweep.space, each in its own process, in a "
        "journal at OUT/sweep/journal.log; run it again on the same --out to resume.",
    )
    _add_common(sweep)
    _add_sweep_options(sweep)
    sweep.set_defaults(func=cmd_sweep)

    for name, text in STEP_HELP.items():
        step = sub.add_parser(name, help=text, description=text)
        _add_common(step)
        if name in ("run", "train"):
            step.add_argument(
                "--resume", action="store_true", help="continue training from the last checkpoint"
            )
            step.add_argument(
                "--nproc",
                type=int,
                help="training processes, one per GPU, through torchrun (default: the recipe's train.nproc)",
            )
            _add_node_options(step)
            step.add_argument(
                "--metrics-port",
                type=int,
                metavar="PORT",
                help="serve training metrics for Prometheus on 0.0.0.0:PORT/metrics (the textfile "
                "OUT/metrics/gapforge.prom is written either way); publish the port: docker run -p PORT:PORT",
            )
        if name == "run":
            step.add_argument(
                "--sweep", action="store_true", help="run the recipe's sweep instead (as `sweep`)"
            )
            _add_sweep_options(step)
        step.set_defaults(func=cmd_step)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 a gate failed, 2 a usage error)."""
    force_offline()
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except RuntimeFailure as failure:
        print(failure.render(), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
