"""Training across nodes: torchrun's own c10d rendezvous, one `gapforge-runtime run` per node.

Every node runs the same sealed image with the same recipe and data, its own output folder, and
`--nnodes N --node-rank R --rdzv-endpoint HOST:PORT` (HOST: node 0's name, the same on every node).
Each node runs the data step itself (it is deterministic: every node encodes the same examples),
then joins one torchrun job (`--rdzv-backend c10d`, no restarts). Every node keeps its own copy of
the checkpoints (Trainer's save_on_each_node): no shared storage is needed, and where there is one
each node still writes to its own folder. After training, node 0 merges, quantizes, evaluates and
writes the report; the other nodes stop with their adapter and checkpoints (identical to node 0's).

The resume rule: run the same command with `--resume` on every node. The nodes compare their
complete checkpoints before training and all resume from the newest step every node holds (a node
killed while saving has one fewer); newer checkpoints of the abandoned run are removed.

A node that stops (a crash, a lost network) ends the job: torchrun's agents on the other nodes see
the rendezvous close, stop their workers and exit non-zero; each node says so, and keeps the
checkpoints written so far.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gapforge_runtime.errors import RuntimeFailure

DEFAULT_PORT = 29400
"""torchrun's c10d rendezvous port when the endpoint names none."""

_ENDPOINT = re.compile(r"^(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class Nodes:
    """Where this process stands in a multi-node job."""

    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""
    """HOST:PORT of the c10d rendezvous (node 0)."""
    job_id: str = "gapforge"
    """torchrun's --rdzv-id: the same on every node of one job."""
    timeout: int = 900
    """Seconds a node waits for the others to join."""

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    @property
    def lead(self) -> bool:
        """Node 0 finishes the run (merge, quantize, evaluate, report)."""
        return self.node_rank == 0


def nodes_from_args(
    nnodes: int | None,
    node_rank: int | None,
    endpoint: str | None,
    job_id: str | None,
    recipe_nnodes: int = 1,
    timeout: int | None = None,
) -> Nodes:
    """Check the multi-node options together; a clear error naming the option and the fix."""
    count = nnodes or recipe_nnodes
    if count < 1:
        raise RuntimeFailure(
            f"--nnodes {count}: a job needs at least one node; pass --nnodes 2 or more"
        )
    if count == 1:
        if node_rank not in (None, 0) or endpoint:
            raise RuntimeFailure(
                "--node-rank/--rdzv-endpoint are for jobs across nodes: pass --nnodes N (2 or more) "
                "with them, or leave them out for a run on one machine"
            )
        return Nodes()
    if node_rank is None or not 0 <= node_rank < count:
        raise RuntimeFailure(
            f"--node-rank {node_rank}: with --nnodes {count} every node needs its own rank, "
            f"0 to {count - 1} (0 on the node named by --rdzv-endpoint, which finishes the run)"
        )
    if not endpoint:
        raise RuntimeFailure(
            f"--nnodes {count} needs --rdzv-endpoint HOST:PORT: node 0's name or address and a free "
            f"port (default {DEFAULT_PORT}), the same on every node"
        )
    match = _ENDPOINT.match(endpoint)
    port = int(match["port"] or DEFAULT_PORT) if match else 0
    if match is None or not 0 < port < 65536:
        raise RuntimeFailure(
            f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT (for example node0:{DEFAULT_PORT}), "
            "node 0's host name or address and a port every node can reach"
        )
    job = job_id or "gapforge"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", job):
        raise RuntimeFailure(
            f"--rdzv-id {job!r}: use letters, digits, '.', '_' and '-' (at most 64), the same on every node"
        )
    return Nodes(
        nnodes=count,
        node_rank=node_rank,
        endpoint=f"{match['host']}:{port}",
        job_id=job,
        timeout=timeout or 900,
    )


def torchrun_command(nproc: int, spec: Path, nodes: Nodes) -> list[str]:
    """torchrun over `nproc` processes on this node: standalone, or one node of a c10d job."""
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if nodes.multi:
        launcher += [
            f"--nnodes={nodes.nnodes}",
            f"--node-rank={nodes.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={nodes.endpoint}",
            f"--rdzv-id={nodes.job_id}",
            # node 0 hosts the rendezvous store (the endpoint names it); the others connect to it
            f"--rdzv-conf=join_timeout={nodes.timeout},is_host={'1' if nodes.lead else '0'}",
            "--max-restarts=0",
        ]
    else:
        launcher.append("--standalone")
    return [
        *launcher,
        f"--nproc-per-node={nproc}",
        "-m",
        "gapforge_runtime.launch.torchrun",
        str(spec),
    ]


def failure_message(status: int, nproc: int, nodes: Nodes) -> str:
    """What a node says when its torchrun ends in failure."""
    if not nodes.multi:
        return (
            f"distributed training with --nproc {nproc} failed (torchrun exited with status {status}; "
            "the ranks' output is above). Checkpoints written so far are kept: fix the cause and run "
            "again with --resume, or use --nproc 1."
        )
    return (
        f"node {nodes.node_rank} of {nodes.nnodes}: the training job ended with an error (torchrun "
        f"exited with status {status}). A node that stops (a crash, a lost network, a node that never "
        f"joined the rendezvous at {nodes.endpoint} within {nodes.timeout} s) ends the job on every "
        "node; the output above names the first failure. This node's checkpoints written so far are "
        "kept: fix the cause, then run the same command with --resume on every node."
    )


def agree_on_checkpoint(checkpoints: Path, newest: Path | None, first_on_node: bool) -> Path | None:
    """Across nodes, before training: the checkpoint every node holds complete, newest first (a node
    killed mid-save has fewer). Checkpoints newer than it belong to the abandoned run and are
    removed on each node; with none in common, every node starts from step 0."""
    import shutil

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return newest
    complete = sorted(
        int(p.name.split("-", 1)[1])
        for p in checkpoints.glob("checkpoint-*")
        if p.name.split("-", 1)[1].isdigit() and (p / ".complete").is_file()
    ) if newest is not None else []  # fmt: skip
    held: list[list[int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(held, complete)
    common = set.intersection(*(set(steps or []) for steps in held))
    chosen = max(common) if common else None
    if newest is not None and (chosen is None or f"checkpoint-{chosen}" != newest.name):
        described = ", ".join(
            f"rank {r}: {steps[-1] if steps else 'none'}" for r, steps in enumerate(held)
        )
        print(
            f"[train] --resume across nodes: the newest checkpoints differ ({described}); every node "
            f"resumes from {'step ' + str(chosen) if chosen else 'step 0'}, the newest they all hold",
            flush=True,
        )
        if first_on_node:
            for step in complete:
                if chosen is None or step > chosen:
                    shutil.rmtree(checkpoints / f"checkpoint-{step}", ignore_errors=True)
    dist.barrier()
    return checkpoints / f"checkpoint-{chosen}" if chosen is not None else None
