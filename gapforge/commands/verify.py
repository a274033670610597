"""The operator's commands on one bundle, inside the gap with no network: verify, load, run,
preflight, inspect (the site's own commands, trust, inventory, join and deploy, have a module each
beside this one).

Each command is a pair: `<name>_arguments(parser)` adds its arguments, `cmd_<name>(args)` runs it and
returns the exit status. What a command needs is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapforge.commands.trust_options import (
    add_delta_options,
    add_scan_options,
    add_trust_options,
    anchor_of,
    full_bundle,
    operator_key_help,
    scan_options,
    target_anchor,
)
from gapforge.progress import console, step


def verify_arguments(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("bundle", type=Path, help="the bundle folder (dist/<recipe>-<version>)")
    add_trust_options(
        verify,
        "with no --key and no trusted root, check the files against the bundle's own key: "
        "integrity only, it proves nothing about who made the bundle (never for production)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    verify.add_argument(
        "--receipt", action="store_true",
        help="write a signed receipt of this check in the trust folder (receipts/), to file or carry back",
    )  # fmt: skip
    verify.add_argument("--operator-key", type=Path, help=operator_key_help())
    add_scan_options(verify)
    add_delta_options(verify)
    verify.add_argument(
        "--deep", action="store_true",
        help="also hash every blob inside the archive (done anyway when the archive's checksum "
        "fails) and validate the SBOM against the CycloneDX 1.6 schema",
    )  # fmt: skip
    verify.add_argument(
        "--workers", type=int, default=None, help="hashing threads (default: every core)"
    )


def print_verify(report: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    mb = report.bytes_hashed / 1e6
    speed = mb / report.seconds if report.seconds else 0.0
    console.print(
        f"    {report.files_checked} files: {mb:.0f} MB hashed in "
        f"{report.seconds:.1f} s ({speed:.0f} MB/s, {report.workers} threads)"
    )
    if report.key_fingerprint:
        colour = "" if report.key_pinned else "[bold red]"
        console.print(f"    key {report.key_fingerprint} from {colour}{escape(report.key_source)}")
    if not report.key_pinned:
        console.print(
            "[bold red]NOT AUTHENTICATED[/]: --insecure checked the files against the bundle's own "
            "key, which anyone who altered the bundle could have replaced. Pin trust with "
            "'gapforge trust init root.json' or --key."
        )
    if report.development_key:
        console.print(
            "[bold yellow]development key[/]: signed with the key a build cache made for itself "
            "(no --key at build time): for development only; a release repository refuses it on "
            "its approved channel."
        )
    if report.scan is not None:
        scanned = report.scan
        console.print(
            f"    ClamAV: {scanned.get('files_scanned')} files, "
            f"{(scanned.get('bytes_scanned') or 0) / 1e6:.0f} MB scanned with "
            f"{scanned['database'].get('signatures') or '?'} signatures "
            f"({scanned['database'].get('path')}) in {scanned.get('seconds')} s: "
            f"{len(scanned.get('hits') or [])} hits"
        )
    if report.release is not None and report.release.ok:
        release = report.release
        console.print(
            f"    release {release.name} {release.version} on channel {release.channel} "
            f"(root version {release.root_version})"
        )
    if report.ok and report.archive is not None:
        archive = report.archive
        if not report.authenticated:
            console.print(f"[bold red]INTEGRITY ONLY[/] {report.bundle} (origin NOT proven)")
        else:
            console.print(f"[bold green]verified[/] {report.bundle}")
        how = "" if report.authenticated else " (the bundle's own key: integrity only)"
        console.print(f"  signature     ok{how}")
        console.print(f"  image digest  {archive.manifest_digest}")
        console.print(f"  image ID      {archive.config_digest}")
        console.print("  pretest       PASS")
        return
    table = Table("file", "problem", title=f"{len(report.problems)} problems", title_justify="left")
    for problem in report.problems:
        table.add_row(escape(problem.file), escape(problem.message), style="red")
    console.print(table)
    console.print(
        f"[bold red]FAILED[/] {report.bundle}: bad files: {', '.join(report.bad_files)}. Do not load "
        "this bundle; get an intact copy from the release manager."
    )


def cmd_verify(args: argparse.Namespace) -> int:
    from gapforge.bundle import IMAGE_TAR
    from gapforge.bundle.sums import prefetch

    # The archive is most of the bytes and its whole-file hash is sequential: begin it now, so the
    # imports, the trust anchor and the signature check run beside it (not for --deep, which
    # hashes each blob in the same pass).
    early = None if args.deep else prefetch(args.bundle / IMAGE_TAR)
    from gapforge.operator.verify import verify_bundle

    anchor = anchor_of(args)
    bundle = full_bundle(args)
    step(f"verifying {bundle}")
    report = verify_bundle(bundle, anchor, args.workers, args.deep, scan_options(args),
                           early if bundle == args.bundle else None)  # fmt: skip
    receipt = None
    if args.receipt and report.authenticated:  # a receipt records a proven success, never a failure
        from gapforge.operator.gate import gate
        from gapforge.operator.load import record_receipt

        receipt = record_receipt(
            gate(report, "verify --receipt"), "verify", None, args.operator_key
        )
    if args.json:
        print(json.dumps(report.as_json() | {"receipt": receipt and str(receipt)}, indent=2))
    else:
        print_verify(report)
        if receipt is not None:
            console.print(f"  receipt       {receipt}")
        elif args.receipt:
            console.print("  receipt       none written: a receipt records a verified bundle only")
    return report.exit_status


def load_arguments(load: argparse.ArgumentParser) -> None:
    load.add_argument("bundle", type=Path)
    add_trust_options(
        load,
        "load with no trust anchor (the bundle's own key), or even if verification fails: "
        "never for production",
    )
    load.add_argument(
        "--to",
        metavar="HOST/REPO",
        help="push into this registry with skopeo instead of docker load",
    )
    load.add_argument("--operator-key", type=Path, help=operator_key_help())
    add_scan_options(load)
    add_delta_options(load)
    load.add_argument(
        "--no-tls-verify", dest="tls_verify", action="store_const", const=False, default=None,
        help="talk plain HTTP to the registry (default: only for 127.0.0.0/8 and localhost)",
    )  # fmt: skip


def cmd_load(args: argparse.Namespace) -> int:
    from gapforge.operator.load import load_bundle

    anchor = anchor_of(args)
    loaded = load_bundle(
        full_bundle(args), anchor, args.to, args.insecure, args.tls_verify,
        on_verified=print_verify, operator_key=args.operator_key, scan=scan_options(args),
    )  # fmt: skip
    console.print(f"[bold green]loaded[/] into {loaded.where}")
    console.print(f"  image digest  {loaded.manifest_digest}")
    console.print(f"  image ID      {loaded.config_digest}")
    if loaded.receipt is not None:
        console.print(f"  receipt       {loaded.receipt}")
    return 0


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


def preflight_arguments(pre: argparse.ArgumentParser) -> None:
    pre.add_argument("target", help="a bundle folder, or an image reference already loaded")
    pre.add_argument("--data", type=Path, required=True)
    pre.add_argument("--out", type=Path, required=True)
    add_trust_options(
        pre,
        "check a bundle that does not authenticate, or an image no verified load imported",
    )


def cmd_preflight(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from gapforge.operator.preflight import preflight

    step(f"preflight: {args.target} on {args.data} → {args.out}")
    checks = preflight(args.target, args.data, args.out, target_anchor(args), args.insecure)
    table = Table("check", "", "detail")
    for check in checks:
        verdict = "[green]go[/]" if check.ok else "[bold red]NO-GO[/]"
        table.add_row(check.name, verdict, escape(check.detail))
    console.print(table)
    go = all(check.ok for check in checks)
    console.print("[bold green]GO[/]" if go else "[bold red]NO-GO[/]: fix the rows marked above")
    return 0 if go else 1


def inspect_arguments(inspect: argparse.ArgumentParser) -> None:
    from gapforge.commands.inspect_registry import inspect_registry_arguments

    inspect.add_argument("bundle", type=Path, nargs="?", help="a bundle folder")
    inspect.add_argument("--json", action="store_true")
    inspect_registry_arguments(inspect)  # its --key (the release key) serves a bundle too
    inspect.add_argument("--repo", type=Path, metavar="METADATA",
                         help="with the trusted root: the release metadata folder to check against")  # fmt: skip
    inspect.add_argument("--channel", help="with the trusted root: the release channel to require")
    inspect.add_argument(
        "--insecure", action="store_true",
        help="show what a bundle that does not verify says about itself, marked UNVERIFIED",
    )  # fmt: skip


def cmd_inspect(args: argparse.Namespace) -> int:
    from gapforge.operator.inspect import bundle_table, describe_bundle

    if args.registry is not None:
        from gapforge.commands.inspect_registry import cmd_inspect_registry

        return cmd_inspect_registry(args)
    if args.bundle is None:
        from gapforge.errors import BundleError

        raise BundleError(
            "inspect: pass a bundle folder (dist/<recipe>-<version>), or --registry HOST/REPO:TAG "
            "to list and check what is attached to an image in a registry"
        )
    facts = _inspect_checked(args, describe_bundle)
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        console.print(bundle_table(facts))
        if facts["verified"]:
            console.print(
                "(verified against your trust anchor, but the archive's bytes: 'verify' hashes them)"
            )
        else:
            console.print("[bold red]UNVERIFIED[/]: what the bundle says about itself (--insecure)")
    return 0


def _inspect_checked(
    args: argparse.Namespace, describe: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """The facts of a bundle the gate proved (its verified bundle.json); with --insecure, of one it
    did not, marked `verified: false`. NotVerified (exit 1) otherwise."""
    from gapforge.operator.anchor import choose_anchor
    from gapforge.operator.gate import NotVerified, gate
    from gapforge.operator.verify import authenticate_index

    key = (args.registry_keys or [None])[0]
    anchor = choose_anchor("inspect", key, args.insecure, args.repo, args.channel)
    report = authenticate_index(args.bundle, anchor)
    if report.authenticated:
        verified = gate(report, "inspect")
        return describe(verified.folder, verified.index, verified.sums_sha256) | {"verified": True}
    if not args.insecure:
        raise NotVerified(report, "inspect")
    step(
        f"[bold red]--insecure[/]: {args.bundle} did not verify; showing what it says about itself"
    )
    return describe(args.bundle) | {"verified": False}
