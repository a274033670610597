"""The operator's commands, inside the gap with no network: verify, load, run, preflight, inspect.

Each command is a pair: `<name>_arguments(parser)` adds its arguments, `cmd_<name>(args)` runs it and
returns the exit status. What a command needs is imported when it runs. The operator's coming
commands (trust, inventory, join) will live here too: see gapforge.commands.release_manager.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gapforge.progress import console, step

KEY_HELP = (
    "the release key's public half (.pub.pem), received out of band: pins it for this command"
)


def operator_key_help() -> str:
    from gapforge.bundle.receipt import OPERATOR_KEY_HELP

    return OPERATOR_KEY_HELP


def add_trust_options(parser: argparse.ArgumentParser, insecure_help: str) -> None:
    """The trust anchor (gapforge.bundle.anchor): --key, or the root from 'gapforge trust init';
    --repo and --channel for the release check; --insecure, explicit and loud."""
    parser.add_argument("--key", type=Path, help=KEY_HELP)
    parser.add_argument(
        "--repo", type=Path, metavar="METADATA",
        help="the release repository's metadata folder to check against (default: the bundle's "
        "own release/metadata/); used with the trusted root from 'gapforge trust init'",
    )  # fmt: skip
    parser.add_argument(
        "--channel", help="the release channel to require (default: the site's, from trust init)"
    )
    parser.add_argument("--insecure", action="store_true", help=insecure_help)


def anchor_of(args: argparse.Namespace) -> Any:
    """The command's trust anchor, or NoTrustAnchor (exit 2) saying how to get one."""
    from gapforge.bundle.anchor import choose_anchor

    return choose_anchor(args.command, args.key, args.insecure, args.repo, args.channel)


def target_anchor(args: argparse.Namespace) -> Any:
    """run/preflight: a bundle folder needs the anchor; an image reference is checked against the
    signed receipt of the verified load that imported it instead (None here)."""
    return anchor_of(args) if Path(args.target).is_dir() or args.key else None


def add_scan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scan", action="store_true",
        help="clean room: run ClamAV (clamscan) over every file and the contents of every layer "
        "before anything is loaded; a hit refuses the bundle, naming the layer and path",
    )  # fmt: skip
    parser.add_argument(
        "--clamav-db", type=Path, metavar="PATH",
        help="the site's ClamAV signature database, a folder or a file (default /var/lib/clamav)",
    )  # fmt: skip
    parser.add_argument(
        "--scan-tmp", type=Path, metavar="DIR",
        help="where the layers are unpacked for the scan (default $TMPDIR); needs the image's size free",
    )  # fmt: skip


def add_delta_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="held", type=Path, action="append", default=[], metavar="SOURCE",
        help="BUNDLE is a delta: rebuild it from these (the site's bundle folders, folders of "
        "bundles, blobs/sha256/ folders; repeatable; read only), then check it like a full bundle",
    )  # fmt: skip
    parser.add_argument(
        "--rebuild-into", type=Path, metavar="DIR", default=None,
        help="where a delta's full bundle is rebuilt (default: the current folder)",
    )  # fmt: skip


def full_bundle(args: argparse.Namespace) -> Path:
    """args.bundle, or, for a delta, the full bundle rebuilt from it and what the site holds."""
    from gapforge.errors import BundleError
    from gapforge.transfer import is_delta

    bundle: Path = args.bundle
    if not is_delta(bundle):
        return bundle
    if not args.held:
        raise BundleError(
            f"{bundle}: a delta bundle (it holds only the blobs the site lacked): pass --from with "
            "where the site keeps what it already holds (the bundle it was made against, a folder "
            "of bundles), and it is rebuilt and checked like the full bundle"
        )
    from gapforge.transfer.rebuild import rebuild_bundle

    step(f"rebuilding the full bundle from the delta {bundle}")
    into = args.rebuild_into or Path.cwd()
    return rebuild_bundle(bundle, list(args.held), into, anchor_of(args), args.command).path


def scan_options(args: argparse.Namespace) -> Any:
    from gapforge.bundle.verify import ScanOptions

    return ScanOptions(args.clamav_db, args.scan_tmp) if args.scan else None


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


def _print_verify(report: Any) -> None:
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
    from gapforge.bundle.verify import verify_bundle

    anchor = anchor_of(args)
    bundle = full_bundle(args)
    step(f"verifying {bundle}")
    report = verify_bundle(bundle, anchor, args.workers, args.deep, scan_options(args),
                           early if bundle == args.bundle else None)  # fmt: skip
    receipt = None
    if args.receipt and report.authenticated:  # a receipt records a proven success, never a failure
        from gapforge.bundle.gate import gate
        from gapforge.bundle.load import record_receipt

        receipt = record_receipt(
            gate(report, "verify --receipt"), "verify", None, args.operator_key
        )
    if args.json:
        print(json.dumps(report.as_json() | {"receipt": receipt and str(receipt)}, indent=2))
    else:
        _print_verify(report)
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
    from gapforge.bundle.load import load_bundle

    anchor = anchor_of(args)
    loaded = load_bundle(
        full_bundle(args), anchor, args.to, args.insecure, args.tls_verify,
        on_verified=_print_verify, operator_key=args.operator_key, scan=scan_options(args),
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
    from gapforge.bundle.run import run_image
    from gapforge.multinode import node_run

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

    from gapforge.bundle.preflight import preflight

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
    from gapforge.registry.registry_cli import inspect_registry_arguments

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
    from gapforge.bundle.inspect import bundle_table, describe_bundle

    if args.registry is not None:
        from gapforge.registry.registry_cli import cmd_inspect_registry

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
    from gapforge.bundle.anchor import choose_anchor
    from gapforge.bundle.gate import NotVerified, gate
    from gapforge.bundle.verify import authenticate_index

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


def inventory_arguments(parser: argparse.ArgumentParser) -> None:
    from gapforge.transfer.delta_cli import inventory_arguments as arguments

    arguments(parser)


def cmd_inventory(args: argparse.Namespace) -> int:
    from gapforge.transfer.delta_cli import cmd_inventory as run

    return run(args)


def join_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", type=Path, nargs="+", metavar="PARTS_OR_DELTA",
        help="mounted media (disc-01 …), part files, the folder 'gapforge split' wrote; or one "
        "delta folder ('gapforge delta' wrote it) with --from",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="where the bundle folder goes")
    parser.add_argument(
        "--from", dest="held", type=Path, action="append", default=[], metavar="SOURCE",
        help="for a delta: where the site's blobs are (bundle folders, folders of bundles, "
        "blobs/sha256/ folders; repeatable; read only)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true", help="only check the media given, block by block"
    )
    add_trust_options(parser, "verify the joined bundle against its own key only")


def cmd_join(args: argparse.Namespace) -> int:
    """Parts (repaired from parity) or a delta (plus what the site holds) into the full bundle.
    The parts manifest or the delta's SHA256SUMS is checked against the operator's trust anchor
    before anything it names is touched, and the result goes through the trust gate before it is
    renamed into place (gapforge.transfer.trust)."""
    from gapforge.errors import BundleError
    from gapforge.release.client import trusted_root_installed
    from gapforge.transfer import is_delta

    if args.check:  # one medium (or several) on its own: every block against the manifest
        from gapforge.transfer.split_cli import check_media
        from gapforge.transfer.split_cli import cmd_join as check_unpinned

        if args.key is None and not args.insecure and trusted_root_installed():
            from gapforge.transfer.join_sources import media_keys

            return check_media(args.sources, media_keys(args.sources, anchor_of(args)))
        return check_unpinned(args)  # --key, or no anchor: says UNPINNED loudly
    anchor = anchor_of(args)  # before any work: no anchor, no join
    if args.out is None:
        raise BundleError("gapforge join: --out DIR is needed (or --check to only check media)")
    if len(args.sources) == 1 and is_delta(args.sources[0]):
        from gapforge.transfer.rebuild import rebuild_bundle

        step(f"checking and rebuilding the full bundle from the delta {args.sources[0]}")
        report = rebuild_bundle(args.sources[0], list(args.held), args.out, anchor).report
    else:
        from gapforge.transfer.split_cli import join_verified

        report = join_verified(args.sources, args.out, anchor)
    _print_verify(report)
    return 0


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "inventory": inventory_arguments,
    "join": join_arguments,
    "verify": verify_arguments,
    "load": load_arguments,
    "run": run_arguments,
    "preflight": preflight_arguments,
    "inspect": inspect_arguments,
}


def register(name: str, parser: argparse.ArgumentParser) -> None:
    """Add the arguments of `name`, one of this module's commands, to its parser."""
    ARGUMENTS[name](parser)


def trust_arguments(trust: argparse.ArgumentParser) -> None:
    sub = trust.add_subparsers(dest="trust_command", required=True, metavar="SUBCOMMAND")
    init = sub.add_parser("init", help="pin the release repository's root.json (out of band)")
    init.add_argument("root_json", type=Path)
    init.add_argument("--channel", choices=("approved", "candidate"), default="approved")
    init.add_argument("--force", action="store_true", help="replace the site's trust state")
    sub.add_parser("show", help="what this site trusts")
    update = sub.add_parser("update", help="refresh from a metadata folder (follows rotations)")
    update.add_argument("--metadata", type=Path, required=True)


def _print_trust(state: Any) -> None:
    from rich.table import Table

    table = Table("", "", title=f"trust state {state.path}", title_justify="left")
    table.add_row("root version", str(state.root_version))
    table.add_row("root expires", state.as_json()["root_expires"])
    table.add_row("root threshold", f"{state.threshold} of {len(state.root_keys)}")
    for fp, keyid in state.root_keys:
        table.add_row("root key", f"{fp} (keyid {keyid[:8]})")
    table.add_row("channel", state.channel)
    table.add_row("timestamp version", str(state.timestamp_version or "none yet"))
    receipts = Path(state.path) / "receipts"
    count = len(list(receipts.glob("*.receipt.json"))) if receipts.is_dir() else 0
    table.add_row("receipts", f"{count} signed receipts in {receipts}")
    console.print(table)


def cmd_trust(args: argparse.Namespace) -> int:
    from gapforge.release.client import trust_init, trust_state, trust_update

    if args.trust_command == "init":
        state = trust_init(args.root_json, args.channel, force=args.force)
        console.print(f"[bold green]trusted[/] release root version {state.root_version}")
        _print_trust(state)
    elif args.trust_command == "show":
        _print_trust(trust_state())
    else:
        before, after = trust_update(args.metadata)
        console.print(f"root version {before.root_version} → {after.root_version}")
        _print_trust(after)
    return 0


ARGUMENTS["trust"] = trust_arguments


def deploy_arguments(parser: argparse.ArgumentParser) -> None:
    from gapforge.deploy.cli import deploy_arguments as arguments

    arguments(parser)


def cmd_deploy(args: argparse.Namespace) -> int:
    from gapforge.deploy.cli import cmd_deploy as run

    return run(args)


ARGUMENTS["deploy"] = deploy_arguments
