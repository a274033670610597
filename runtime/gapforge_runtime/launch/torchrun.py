"""Multi-process training through torchrun: `--nproc N` relaunches the training part of the train step.

The parent process keeps everything else (data step, step records, merge, quantize, eval). It writes a
small JSON spec, runs `python -m torch.distributed.run --standalone --nproc_per_node N -m
gapforge_runtime.launch.torchrun SPEC` (or one node of a c10d job across nodes: gapforge_runtime.launch.nodes),
and reads the result that the node's first rank writes. Every rank trains through
transformers' Trainer, which sets up DDP (NCCL on GPUs, gloo on CPU) or FSDP from the torchrun
environment; checkpoints and --resume are the same as in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gapforge_runtime.errors import RuntimeFailure
from gapforge_runtime.files import write_json_atomic
from gapforge_runtime.launch.nodes import Nodes, failure_message, torchrun_command

# Variables every rank must see (the offline guarantee, and NVLink multicast off on shared hosts).
CHILD_ENV = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "OMP_NUM_THREADS": "1",
}


def launch_training(
    spec: dict[str, Any], nproc: int, work: Path, nodes: Nodes | None = None
) -> dict[str, Any]:
    """Run the training on `nproc` ranks of this node (of `nodes`, when the job spans several);
    return this node's first rank's TrainResult as a dict."""
    nodes = nodes or Nodes()
    spec_path = work / "train-launch.json"
    result_path = work / "train-result.json"
    result_path.unlink(missing_ok=True)
    write_json_atomic(
        spec_path,
        {**spec, "result": str(result_path), "nnodes": nodes.nnodes, "node_rank": nodes.node_rank},
    )
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CHILD_ENV.items()}}
    where = (
        f" as node {nodes.node_rank} of {nodes.nnodes} (rendezvous {nodes.endpoint}, job {nodes.job_id})"
        if nodes.multi
        else ""
    )
    print(f"[train] starting {nproc} processes through torchrun{where}", flush=True)
    command = torchrun_command(nproc, spec_path, nodes)
    status = subprocess.run(command, env=env, check=False).returncode
    if status != 0 or not result_path.is_file():
        raise RuntimeFailure(failure_message(status, nproc, nodes))
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def worker(spec_path: Path) -> int:
    """One rank: read the spec, train, and (each node's first rank) write the result."""
    from gapforge_runtime.offline import force_offline

    force_offline()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    try:
        return _train_rank(spec)
    except RuntimeFailure as failure:
        print(failure.render(), file=sys.stderr, flush=True)
        return 2


def _train_rank(spec: dict[str, Any]) -> int:
    from gapforge_runtime.config import load_recipe_settings
    from gapforge_runtime.methods.checkpoints import world
    from gapforge_runtime.methods.sft import train_adapter, training_items
    from gapforge_runtime.modelio import load_tokenizer

    recipe = load_recipe_settings(spec["recipe"])
    model_dir = Path(spec["model_dir"])
    data_dir = Path(spec["data_dir"])
    tokenizer = load_tokenizer(model_dir)
    result = train_adapter(
        recipe, model_dir, tokenizer,
        training_items(recipe, tokenizer, data_dir, "train"),
        training_items(recipe, tokenizer, data_dir, "validation"),
        Path(spec["checkpoints"]), Path(spec["adapter"]), Path(spec["log_file"]), bool(spec["resume"]),
        nnodes=int(spec.get("nnodes", 1)),
    )  # fmt: skip
    rank, _ = world()
    if rank == 0:
        write_json_atomic(Path(spec["result"]), asdict(result))
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Wait for every rank, then destroy the process group while the interpreter is whole.

    Left to interpreter exit, gloo's worker threads can outlive Python and abort the process
    (SIGABRT, "terminate called without an active exception"), failing a run that had finished:
    CI met it once on the resume test (pytorch/pytorch#179291 describes the cause).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
