"""The runtime's command line: the entrypoint of every sealed image."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gapforge_runtime.commands import add_tool_commands
from gapforge_runtime.errors import EXIT_GATE_FAILED, EXIT_USAGE, RuntimeFailure
from gapforge_runtime.image_contract import (
    LLAMA_CPP_DIR,
    LLAMA_CPP_ENV,
    MODEL_DIR,
    MODEL_ENV,
    OUT_ENV,
)
from gapforge_runtime.launch.nodes import DEFAULT_PORT, nodes_from_args
from gapforge_runtime.offline import force_offline

if TYPE_CHECKING:
    from gapforge_runtime.steps.context import RunContext

STEP_HELP = {
    "run": "the whole recipe: validate data, train, merge, quantize, evaluate, report",
    "data": "validate the data (every bad line listed), dedupe and split it",
    "train": "train the LoRA adapter (--resume continues after an interruption)",
    "merge": "merge the adapter into the base model (safetensors)",
    "quantize": "write GGUF f16 and the recipe's quantizations, the adapter GGUF, Modelfiles",
    "eval": "score base, merged and GGUF models on the test split; apply the gates",
}


def _context(args: argparse.Namespace) -> RunContext:
    from gapforge_runtime.config import load_recipe_settings
    from gapforge_runtime.features import require_image_features
    from gapforge_runtime.outputs import Layout
    from gapforge_runtime.steps.context import RunContext

    recipe = load_recipe_settings(args.recipe)
    require_image_features(recipe.spec, str(recipe.path))  # before any work: run, a step, a sweep
    out = Path(args.out or os.environ.get(OUT_ENV) or "outputs").resolve()
    base = Path(args.model or os.environ.get(MODEL_ENV) or MODEL_DIR).resolve()
    parent = None
    if getattr(args, "parent", None):
        from gapforge_runtime.methods.continual import load_parent

        parent = load_parent(Path(args.parent).resolve())
    llama_cpp = args.llama_cpp or os.environ.get(LLAMA_CPP_ENV) or LLAMA_CPP_DIR
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
    from gapforge_runtime.steps.context import observed_run, prepare

    if getattr(args, "sweep", False):
        return cmd_sweep(args)
    ctx = _context(args)
    # Before any work: a GPU-only method or target on a machine without a GPU stops here.
    # `train` checks the quantize targets too: better refused now than after hours of training.
    checked = {"run": ("train", "quantize"), "train": ("train", "quantize")}.get(
        args.command, (args.command,)
    )
    check_hardware(ctx.recipe.train.adapter_method, ctx.recipe.quantize, checked, ctx.nproc)
    prepare(ctx)
    steps = pipeline.steps_for(args.command, ctx)
    if args.command == "run" and ctx.nodes.lead:
        # Fail before hours of training, not after: the converter must be there for quantize.
        from gapforge_runtime.export.quantize import check_llama_cpp

        check_llama_cpp(ctx.llama_cpp)
    with observed_run(
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
    from gapforge_runtime.export.quantize import check_llama_cpp
    from gapforge_runtime.launch.sweep import check_recipe, run_sweep
    from gapforge_runtime.pipeline import AFTER_TRAINING
    from gapforge_runtime.preflight import check_hardware, check_targets
    from gapforge_runtime.report.manifest import write_manifest_and_report
    from gapforge_runtime.steps.context import observed_run, prepare

    ctx = _context(args)
    check_recipe(ctx.recipe)
    check_hardware(ctx.recipe.train.adapter_method, ctx.recipe.quantize, ("train", "quantize"), 1)
    check_targets(ctx.recipe.quantize)
    prepare(ctx)
    check_llama_cpp(ctx.llama_cpp)  # before hours of trials, not after
    best = run_sweep(ctx, args.trials, args.parallel)
    with observed_run(best, tracking=not args.no_tracking):
        for step in AFTER_TRAINING:
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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="recipe JSON (default: $GAPFORGE_RECIPE or the image's)")
    parser.add_argument(
        "--model",
        help=f"base model folder, HF layout (default: ${MODEL_ENV} or {MODEL_DIR})",
    )
    parser.add_argument("--data", help="JSONL data (default: the recipe's sample data)")
    parser.add_argument("--validation", help="your own validation split (JSONL, same format)")
    parser.add_argument("--test", help="your own test split (JSONL, same format)")
    parser.add_argument("--out", help="output folder (default: $GAPFORGE_OUT or ./outputs)")
    parser.add_argument(
        "--llama-cpp",
        help=f"llama.cpp scripts folder (default: ${LLAMA_CPP_ENV} or {LLAMA_CPP_DIR})",
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
    add_tool_commands(sub)
    _add_step_commands(sub)
    return parser


def _add_step_commands(sub: Any) -> None:
    """`sweep` and the run's steps (run, data, train, merge, quantize, eval), with their options."""
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
