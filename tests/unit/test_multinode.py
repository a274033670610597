"""`gapforge run`'s node options against the runtime's: what the builder passes, the image accepts.

The operator CLI runs inside the gap without the runtime package (that is installed in the image
only), so gapforge.multinode checks the node options itself rather than importing
gapforge_runtime.launch.nodes; these tests keep the two checks in step.
"""

from __future__ import annotations

import pytest
from gapforge_runtime.launch.nodes import DEFAULT_PORT, nodes_from_args

from gapforge.multinode import DEFAULT_PORT as BUILDER_DEFAULT_PORT
from gapforge.multinode import node_run


@pytest.mark.parametrize("endpoint", [None, "gapforge-node0", "node0:29500", "10.0.0.1:1234"])
def test_the_runtime_accepts_the_node_options_the_builder_passes(endpoint: str | None) -> None:
    node = node_run(3, 2, endpoint, "gap-internal", None, "job-1")
    assert node is not None
    args = node.runtime_args()
    flags = dict(zip(args[::2], args[1::2], strict=True))
    nodes = nodes_from_args(
        int(flags["--nnodes"]),
        int(flags["--node-rank"]),
        flags["--rdzv-endpoint"],
        flags["--rdzv-id"],
    )
    assert (nodes.nnodes, nodes.node_rank, nodes.endpoint, nodes.job_id) == (
        3, 2, node.endpoint, "job-1"
    )  # fmt: skip


def test_builder_and_runtime_default_to_one_rendezvous_port() -> None:
    assert BUILDER_DEFAULT_PORT == DEFAULT_PORT
