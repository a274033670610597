"""`gapforge run` as one node of a training job across nodes (the runtime's gapforge_runtime.launch.nodes).

Each node's container joins an *internal* Docker network (`docker network create --internal`):
the nodes reach each other by name and nothing else, so the sealed run's promise (no way out)
holds across nodes. A network that is not internal is refused, with the command that makes one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gapforge.errors import BundleError

DEFAULT_PORT = 29400


@dataclass(frozen=True)
class NodeRun:
    """This node's place in the job, as `gapforge run` was told it."""

    nnodes: int
    node_rank: int
    endpoint: str
    network: str
    hostname: str
    job_id: str

    def runtime_args(self) -> list[str]:
        """The runtime's own options for this node."""
        return [
            "--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank),
            "--rdzv-endpoint", self.endpoint, "--rdzv-id", self.job_id,
        ]  # fmt: skip


def node_run(
    nnodes: int | None,
    node_rank: int | None,
    endpoint: str | None,
    network: str | None,
    hostname: str | None,
    job_id: str | None,
) -> NodeRun | None:
    """The node options checked together (None for a run on one machine)."""
    if not nnodes or nnodes == 1:
        given = [flag for flag, value in (("--node-rank", node_rank), ("--rdzv-endpoint", endpoint),
                 ("--network", network), ("--hostname", hostname)) if value is not None]  # fmt: skip
        if given:
            raise BundleError(
                f"run: {', '.join(given)} are for a job across nodes: add --nnodes N (2 or more), "
                "or leave them out for a run on one machine (network cut)"
            )
        return None
    if nnodes < 1:
        raise BundleError(f"run: --nnodes {nnodes}: pass 2 or more nodes, or leave it out")
    if node_rank is None or not 0 <= node_rank < nnodes:
        raise BundleError(
            f"run: --node-rank {node_rank}: with --nnodes {nnodes} each node needs its own rank, "
            f"0 to {nnodes - 1}; node 0 is the one --rdzv-endpoint names, and it writes the report"
        )
    if not network:
        raise BundleError(
            "run: a node of a job across nodes needs --network NAME, an internal Docker network "
            "the nodes share and nothing else reaches: docker network create --internal NAME "
            "(across hosts: an internal overlay network, docker network create -d overlay --internal NAME)"
        )
    name = hostname or f"gapforge-node{node_rank}"
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise BundleError(
            f"run: --hostname {name!r}: use lower-case letters, digits and '-' (at most 63)"
        )
    if not endpoint:
        endpoint = f"gapforge-node0:{DEFAULT_PORT}"
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise BundleError(
            f"run: --rdzv-endpoint {endpoint!r}: expected HOST:PORT, node 0's --hostname and a port "
            f"(default gapforge-node0:{DEFAULT_PORT})"
        )
    return NodeRun(nnodes, node_rank, f"{host}:{port or DEFAULT_PORT}", network, name,
                   job_id or "gapforge")  # fmt: skip


def check_internal_network(client: Any, name: str) -> None:
    """The network exists and is internal (no route out); else a clear error with the fix."""
    from docker.errors import NotFound

    try:
        network = client.networks.get(name)
    except NotFound:
        raise BundleError(
            f"run: --network {name}: no such Docker network. Make it internal, so the nodes reach "
            f"each other and nothing else: docker network create --internal {name}"
        ) from None
    if not network.attrs.get("Internal"):
        raise BundleError(
            f"run: --network {name} is not internal: containers on it can reach outside the gap's "
            f"host. A sealed run only joins an internal network: docker network create --internal "
            f"{name}-internal, then --network {name}-internal"
        )
