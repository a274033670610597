"""`gapforge run BUNDLE --data FILE --out DIR`: verify, then run the sealed image on the
operator's data with the network cut."""

from __future__ import annotations

import argparse
from pathlib import Path

from gapforge.commands.trust_options import (
    add_trust_options,
    target_anchor,
)
from gapforge.progress import console


def run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("target", help="a bundle folder, or an image reference already loaded")
    run.add_argument(
        "--data", type=Path, required=True, help="your data, JSON lines in the recipe's format"
    )
    run.add_argument(
        "--out", type=Path, required=True, help="the output folder (created if missing)"
    )
    run.add_argument("--validation", type=Path, help="your own validation split (JSON lines)")
    run.add_argument("--test", type=Path, help="your own test split (JSON lines)")
    run.add_argument("--gpus", choices=("auto", "all", "none"), default="auto",
                     help="auto: all GPUs for a cuda image when one is present")  # fmt: skip
    run.add_argument("--timeout", type=float, default=None, help="seconds before the run is killed")
    run.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    run.add_argument(
        "--force", action="store_true", help="redo finished steps; replace another run's outputs"
    )
    run.add_argument("--sweep", action="store_true",
                     help="run the recipe's hyper-parameter sweep (resumes on the same --out), ship the best")  # fmt: skip
    run.add_argument(
        "--trials", type=int, help="with --sweep: trials to finish (default: the recipe's)"
    )
    run.add_argument("--parallel", type=int, help="with --sweep: trials at once, one process each")
    nodes = run.add_argument_group(
        "across nodes (one `gapforge run` per node, each with its own --out; RUNBOOK: across nodes)"
    )
    nodes.add_argument("--nnodes", type=int, help="nodes in the training job")
    nodes.add_argument(
        "--node-rank", type=int, help="this node's rank, 0 to nnodes-1 (0 writes the report)"
    )
    nodes.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="node 0's --hostname and port (default gapforge-node0:29400)",
    )
    nodes.add_argument(
        "--rdzv-id", help="the job's name, the same on every node (default gapforge)"
    )
    nodes.add_argument(
        "--network",
        help="an internal Docker network the nodes share (docker network create --internal)",
    )
    nodes.add_argument(
        "--hostname", help="this node's name on that network (default gapforge-node<rank>)"
    )
    run.add_argument(
        "--parent", type=Path, metavar="OUT_OLD",
        help="continue an earlier run: its --out folder (mounted read-only; checked against "
        "its manifest.json): start from its merged model, replay its data, score its test set",
    )  # fmt: skip
    add_trust_options(
        run,
        "run a bundle that does not authenticate, or an image no verified load imported "
        "(never for production)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from gapforge.multinode import node_run
    from gapforge.operator.run import run_image

    node = node_run(args.nnodes, args.node_rank, args.rdzv_endpoint, args.network, args.hostname,
                    args.rdzv_id)  # fmt: skip
    extra = [flag for flag, on in (("--resume", args.resume), ("--force", args.force)) if on]
    if args.sweep:
        extra.append("--sweep")
        for flag, value in (("--trials", args.trials), ("--parallel", args.parallel)):
            extra += [flag, str(value)] if value is not None else []
    status = run_image(args.target, args.data, args.out, args.gpus, args.validation, args.test,
                       extra, args.timeout, anchor=target_anchor(args), insecure=args.insecure,
                       parent=getattr(args, "parent", None), node=node)  # fmt: skip
    verdict = {0: "[bold green]PASS[/]", 1: "[bold red]a gate failed[/] (see report.md)"}
    if node is not None and node.node_rank != 0:
        verdict[0] = f"[green]node {node.node_rank} trained[/] (node 0 writes the report)"
    console.print(
        f"runtime exited with status {status}: {verdict.get(status, '[bold red]error[/]')}; outputs in {args.out}"
    )
    return status
