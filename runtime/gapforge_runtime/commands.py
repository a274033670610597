"""The runtime's commands beside a run's steps: info, import-gguf and plan, each with its parser."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

from gapforge_runtime import __version__
from gapforge_runtime.errors import EXIT_GATE_FAILED, RuntimeFailure
from gapforge_runtime.export.gguf_import import DTYPES
from gapforge_runtime.image_contract import MODEL_DIR, MODEL_ENV, RECIPE_ENV, RECIPE_FILE

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
    recipe_path = Path(path or os.environ.get(RECIPE_ENV, RECIPE_FILE))
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


def cmd_plan(args: argparse.Namespace) -> int:
    """Estimate peak GPU memory of training before any weight is loaded, and whether it fits."""
    from gapforge_runtime import memplan
    from gapforge_runtime.config import load_recipe_settings

    recipe = (
        load_recipe_settings(args.recipe) if (args.recipe or os.environ.get(RECIPE_ENV)) else None
    )
    source = Path(args.config or args.model or os.environ.get(MODEL_ENV) or MODEL_DIR)
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


def add_tool_commands(sub: Any) -> None:
    """The parsers of info, import-gguf and plan."""
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

    _add_plan(sub)


def _add_plan(sub: Any) -> None:
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
