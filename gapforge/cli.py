"""The gapforge command line, by user: lock, build and keygen for build engineers (connected side);
release, diff, delta and split for release managers (connected side); trust, verify, load,
preflight, run, inspect, deploy, inventory and join for operators (inside the gap); and the helpers the
tests and benchmarks use."""

# Wiring only: COMMANDS maps each command to its own module under gapforge/commands/ and its
# function. A module is imported only when its command is run (or when build_parser() is asked for
# every command's arguments); `gapforge --help` imports none.

from __future__ import annotations

import argparse
import errno
import importlib
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gapforge import __version__
from gapforge.cache import default_cache_dir
from gapforge.commands._shared import cache_of, gigabytes
from gapforge.errors import GapforgeError
from gapforge.names import printable
from gapforge.progress import console


@dataclass(frozen=True)
class Command:
    module: str
    """The module under gapforge/commands/ that holds the command."""
    function: str
    """`cmd_<name>(args) -> exit status` in that module; `<name>_arguments(parser)` beside it adds
    the command's arguments."""
    help: str
    user: str
    """Whose command it is: one of USERS, its group in `gapforge --help`."""
    example: str
    """One line that `gapforge COMMAND --help` ends with."""
    uses_cache: bool = False
    """Reads and writes the cache: holds its shared lock against 'cache prune' while it runs."""

    @property
    def arguments(self) -> str:
        """The name of the function in `module` that adds the command's arguments to its parser."""
        return self.function.removeprefix("cmd_") + "_arguments"


BUILD_ENGINEER = "build engineer (connected side)"
RELEASE_MANAGER = "release manager (connected side)"
OPERATOR = "operator (inside the gap, no network)"
USERS = (BUILD_ENGINEER, RELEASE_MANAGER, OPERATOR)
"""The groups of `gapforge --help`, in this order."""

COMMANDS: dict[str, Command] = {
    # the order of `gapforge --help` within each user's group
    "lock": Command("gapforge.commands.lock", "cmd_lock",
                    "rewrite the lockfiles from their inputs (needs the network)", BUILD_ENGINEER,
                    "gapforge lock --profile cpu recipes/smollm2/lora-q8-q4.yaml", uses_cache=True),
    "build": Command("gapforge.commands.build", "cmd_build",
                     "build a recipe into a sealed image, load it and smoke-run it", BUILD_ENGINEER,
                     "gapforge build recipes/smollm2/lora-q8-q4.yaml", uses_cache=True),
    "validate": Command("gapforge.commands.validate", "cmd_validate", "validate recipes and report every problem",
                        BUILD_ENGINEER, "gapforge validate recipes/smollm2/lora-q8-q4.yaml"),
    "cache": Command("gapforge.commands.cache", "cmd_cache",
                     "what the build cache holds (info), and removing what no build used (prune)",
                     BUILD_ENGINEER, "gapforge cache prune --older-than 30"),
    "keygen": Command("gapforge.commands.keygen", "cmd_keygen", "make an Ed25519 key pair for signing bundles",
                      BUILD_ENGINEER, "gapforge keygen --out release.key"),
    "runtime-env": Command("gapforge.commands.runtime_env", "cmd_runtime_env",
                           "install a profile's locked runtime wheels into a Python (tests)",
                           BUILD_ENGINEER,
                           "gapforge runtime-env --python .venv/bin/python --llama-cpp-dir llama.cpp",
                           uses_cache=True),
    "release": Command("gapforge.commands.release", "cmd_release",
                       "a TUF repository of releases: add, promote, revoke, rotate, refresh, export",
                       RELEASE_MANAGER, "gapforge release add dist/smollm2-135m-desk-0.1.0 --repo REPO"),
    "diff": Command("gapforge.commands.diff", "cmd_diff",
                    "what changed between two bundles: recipe, packages, model, layers, figures",
                    RELEASE_MANAGER, "gapforge diff dist/NAME-0.1.0 dist/NAME-0.2.0 --markdown"),
    "delta": Command("gapforge.commands.delta", "cmd_delta",
                     "a delta bundle: only the blobs and files a site's inventory lacks",
                     RELEASE_MANAGER,
                     "gapforge delta dist/NAME-0.2.0 --against inventory.json --out outgoing/"),
    "split": Command("gapforge.commands.split", "cmd_split",
                     "cut a bundle into parts sized to the medium, each hashed, with parity",
                     RELEASE_MANAGER,
                     "gapforge split dist/NAME-0.1.0 --media dvd --parity 2 --out media/ --key release.key"),
    "trust": Command("gapforge.commands.trust", "cmd_trust",
                     "pin the release repository's root once; show or update what the site trusts",
                     OPERATOR, "gapforge trust init root.json"),
    "verify": Command("gapforge.commands.verify", "cmd_verify",
                      "check a bundle offline: signature, checksums, digests", OPERATOR,
                      "gapforge verify dist/smollm2-135m-desk-0.1.0"),
    "load": Command("gapforge.commands.load", "cmd_load",
                    "verify a bundle, then load its image into Docker or a registry", OPERATOR,
                    "gapforge load dist/smollm2-135m-desk-0.1.0"),
    "preflight": Command("gapforge.commands.preflight", "cmd_preflight",
                         "go/no-go before a run: image, offline start, data, disk, GPU", OPERATOR,
                         "gapforge preflight BUNDLE --data my.jsonl --out out/"),
    "run": Command("gapforge.commands.run", "cmd_run", "run the sealed image on your data, network cut", OPERATOR,
                   "gapforge run BUNDLE --data my.jsonl --out out/"),
    "inspect": Command("gapforge.commands.inspect", "cmd_inspect",
                       "what a bundle holds: recipe, model, packages, digests, pretest", OPERATOR,
                       "gapforge inspect BUNDLE --json"),
    "deploy": Command("gapforge.commands.deploy", "cmd_deploy",
                      "the cluster hand-off: Kubernetes manifests or an sbatch script, image by digest",
                      OPERATOR, "gapforge deploy BUNDLE --registry REGISTRY/REPO --kubernetes k8s/"),
    "inventory": Command("gapforge.commands.inventory", "cmd_inventory",
                         "the signed list of blobs and files this site holds (what a delta is made against)",
                         OPERATOR, "gapforge inventory /srv/bundles --out inventory.json"),
    "join": Command("gapforge.commands.join", "cmd_join",
                    "rebuild a bundle from media parts (repairing from parity) or a delta, then verify it",
                    OPERATOR, "gapforge join /media/disc-* --out bundles/"),
}  # fmt: skip

CACHE_USERS = tuple(name for name, command in COMMANDS.items() if command.uses_cache)
"""Commands that read and write the cache, holding its shared lock against 'cache prune'."""


def command_function(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs command `name`, its module imported now."""
    command = COMMANDS[name]
    function: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(command.module), command.function
    )
    return function


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. With `commands`, only those get their arguments (their modules are
    imported); the others are listed with their help, their modules left alone."""
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(
        prog="gapforge", usage="gapforge [-h] [--version] COMMAND ...", description=DESCRIPTION, epilog=grouped_commands(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"gapforge {__version__}")
    # The commands are listed by user in the epilog; argparse's own flat list is suppressed.
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=argparse.SUPPRESS
    )
    for name, command in COMMANDS.items():
        subparser = sub.add_parser(
            name, prog=f"gapforge {name}", help=command.help, description=command.help,
            epilog=f"example:\n  {command.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if name in wanted:
            getattr(importlib.import_module(command.module), command.arguments)(subparser)
    return parser


DESCRIPTION = (
    "gapforge turns a fine-tuning recipe into a sealed, signed image, carries it across an air gap "
    "in a bundle anyone can verify offline, and runs it there with no network."
)


def grouped_commands() -> str:
    """Every command under its user's heading, each with its one-line purpose."""
    width = max(len(name) for name in COMMANDS)
    lines = []
    for user in USERS:
        lines.append(f"{user}:")
        lines += [
            f"  {name:<{width}}  {command.help}"
            for name, command in COMMANDS.items()
            if command.user == user
        ]
        lines.append("")
    lines.append("'gapforge COMMAND --help' shows a command's options and ends with an example.")
    return "\n".join(lines)


def _named_command(argv: Sequence[str]) -> list[str]:
    """The command on the line: its first word that is not an option, if that is a command."""
    for word in argv:
        if not word.startswith("-"):
            return [word] if word in COMMANDS else []
    return []


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_named_command(words)).parse_args(words)
    try:
        return _run(args)
    except GapforgeError as exc:
        console.print("[bold red]error:[/] ", end="")
        # a message may quote a name from outside: no escape sequence reaches the terminal
        console.print(printable(exc.message, newlines=True), markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
        return exc.exit_status
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: nothing half-written is trusted; run the command again")
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command, holding the cache's shared lock if it uses the cache; a full disk becomes an
    error the user can act on."""
    function = command_function(args.command)
    try:
        if args.command in CACHE_USERS:  # held for the whole command: 'cache prune' waits for none
            with cache_of(args).using():
                return int(function(args))
        return int(function(args))
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise GapforgeError(_no_space_message(exc, args)) from None


def _no_space_message(exc: OSError, args: argparse.Namespace) -> str:
    """ENOSPC: where, how much is free where it matters, and what to do; partial files are never
    renamed into place, so nothing written so far is trusted."""
    where = exc.filename or "a file"
    places = {"cache": getattr(args, "cache_dir", None) or default_cache_dir()}
    if getattr(args, "out", None) is not None:
        places["out"] = args.out
    free = []
    for name, path in places.items():
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free.append(f"{name} {path}: {gigabytes(shutil.disk_usage(probe).free)} free")
    return (
        f"no space left on the device while writing {where} ({'; '.join(free)}). Nothing "
        "half-written was kept. Free space and run the command again: 'gapforge cache info' shows "
        "what the cache holds, 'gapforge cache prune --older-than 30 --images' removes what no "
        "build used for 30 days and the untagged images older builds left in the engine, and "
        "--cache-dir/--out can point at a bigger disk."
    )


if __name__ == "__main__":
    sys.exit(main())
