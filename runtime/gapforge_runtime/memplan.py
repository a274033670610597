"""The memory planner: peak GPU memory of full / LoRA / QLoRA training, from config.json and the recipe.

An estimate made before any weight is loaded, so an operator learns that a run cannot fit before
it starts. The parts, per GPU:

- weights: 2 bytes a parameter in bf16 (4 on CPU, float32); QLoRA keeps the linear layers in NF4 with
  double quantization (4 bits + 0.127 bits of constants) and embeddings, head and norms in bf16 (the
  runtime puts back what peft's `prepare_model_for_kbit_training` upcasts to float32);
- trainable state: LoRA's A/B matrices in float32 with their gradients and AdamW's two moments
  (16 bytes a trainable parameter); full fine-tuning: bf16 weights + grads, fp32 master + moments
  (16 bytes a parameter, mixed precision);
- activations kept for the backward pass of a Llama-style layer (SDPA attention, no s² term, SwiGLU
  MLP): 7·h + 3·kv + 4·I values a token (norm inputs and outputs, q/k/v before and after RoPE,
  attention output, gate/up/SiLU/product of the MLP) in bf16; with gradient checkpointing only each
  layer's input plus one layer recomputed;
- logits: bf16 logits, their float32 copy for the loss, log-softmax and gradients (16 bytes a
  vocabulary entry a token); with Liger's fused linear cross-entropy (`fused_loss`) only one chunk
  of ceil(tokens / ceil(vocab / hidden)) tokens at a time, rounded up to a power of two as Liger does;
- the CUDA context and allocator slack (a fixed 1 GiB and 10 %), which torch's own peak counter
  (`max_memory_allocated`) does not see: `allocated` is comparable with it, `total` with nvidia-smi.

With N processes, DDP keeps a whole replica on every GPU (plus gradient buckets of the trainable
parameters); FSDP shards weights and trainable state over the N GPUs and keeps activations local.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GiB = 1 << 30
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BYTES_PER_PARAM = (4 + 0.127) / 8
"""4-bit NF4 blocks of 64 with double-quantized absmax constants (QLoRA paper: 0.127 bits a parameter)."""
CONTEXT_BYTES = 1 * GiB
SLACK = 0.10


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only transformer, read from config.json."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """The shape of a Llama / Mistral / Qwen2-style config (nested text_config too)."""
        config = config.get("text_config", config)
        heads = int(config["num_attention_heads"])
        return cls(
            vocab=int(config["vocab_size"]),
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            intermediate=int(config.get("intermediate_size") or 4 * int(config["hidden_size"])),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear module of one layer."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, self.intermediate), "up_proj": (h, self.intermediate),
            "down_proj": (self.intermediate, h),
        }  # fmt: skip

    @property
    def linear_params(self) -> int:
        """Parameters of the transformer layers' linear modules (what QLoRA quantizes)."""
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings and the output head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embedding_params + norms

    def lora_params(self, rank: int, targets: list[str] | str = "all-linear") -> int:
        """Trainable LoRA parameters: r·(in + out) for every targeted linear module."""
        names = (
            LINEAR_MODULES
            if targets == "all-linear"
            else [t for t in targets if t in LINEAR_MODULES]
        )
        shapes = self.linear_shapes()
        return self.layers * sum(rank * (shapes[n][0] + shapes[n][1]) for n in names)


@dataclass(frozen=True)
class TrainingShape:
    """The recipe's side: method, micro-batch, sequence length, LoRA rank, checkpointing, GPUs."""

    method: str  # full | lora | qlora
    batch: int = 1
    seq: int = 2048
    rank: int = 16
    targets: list[str] | str = "all-linear"
    gradient_checkpointing: bool = False
    nproc: int = 1
    distributed: str = "ddp"  # ddp | fsdp
    weight_bytes: float = 2.0
    """Bytes a frozen full-precision weight takes: 2 for bf16 (GPU), 4 for float32 (CPU)."""
    fused_loss: bool = False
    """Liger's fused linear cross-entropy: the logits are never held whole."""


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate, in bytes per GPU, and whether it fits the GPUs given."""

    method: str
    params: int
    trainable_params: int
    weights: int
    trainable_state: int
    activations: int
    logits: int
    allocated: int
    """What torch's allocator peaks at (compare with torch.cuda.max_memory_allocated)."""
    total: int
    """allocated + CUDA context + allocator slack (compare with nvidia-smi, and with GPU memory)."""
    nproc: int
    gpu_memory: int | None
    fits: bool | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate(model: ModelShape, train: TrainingShape, gpu_memory: int | None = None) -> MemoryPlan:
    """Peak memory per GPU of one training configuration."""
    b, s, h = train.batch, train.seq, model.hidden
    qlora = train.method == "qlora"
    weights: float  # bytes; a fraction of a byte per parameter for NF4
    if qlora:
        weights = (
            model.linear_params * NF4_BYTES_PER_PARAM + (model.params - model.linear_params) * 2
        )
    else:
        weights = model.params * train.weight_bytes
    trainable = (
        model.params if train.method == "full" else model.lora_params(train.rank, train.targets)
    )
    state: float = trainable * 16  # fp32 (master) weights, gradients, two AdamW moments
    if train.method == "full":
        weights = 0  # counted in the 16 bytes of mixed-precision state
    checkpointing = train.gradient_checkpointing or qlora
    kv = model.kv_heads * model.head_dim
    per_layer = 2 * s * b * (7 * h + 3 * kv + 4 * model.intermediate)
    if checkpointing:
        activations = 2 * s * b * h * model.layers + per_layer
    else:
        activations = per_layer * model.layers
    tokens = s * b
    if train.fused_loss:
        chunk = -(-tokens // -(-model.vocab // h))
        tokens = min(tokens, 1 << (chunk - 1).bit_length())
    logits = 16 * tokens * model.vocab
    if train.nproc > 1 and train.distributed == "fsdp":
        weights, state = weights / train.nproc, state / train.nproc
    elif train.nproc > 1:
        state += trainable * 4  # DDP's gradient buckets
    allocated = int(weights + state + activations + logits)
    total = int(allocated * (1 + SLACK) + CONTEXT_BYTES)
    return MemoryPlan(
        method=train.method, params=model.params, trainable_params=trainable, weights=int(weights),
        trainable_state=int(state), activations=int(activations), logits=int(logits),
        allocated=allocated, total=total, nproc=train.nproc, gpu_memory=gpu_memory,
        fits=None if gpu_memory is None else total <= gpu_memory,
    )  # fmt: skip


def nodes_needed(
    model: ModelShape,
    train: TrainingShape,
    gpu_memory: int,
    gpus_per_node: int,
    max_nodes: int = 128,
) -> tuple[int, str, MemoryPlan] | None:
    """The fewest nodes of `gpus_per_node` GPUs (of `gpu_memory` each) the training fits on, how the
    GPUs share the model (ddp when one GPU holds it, else fsdp over every GPU of the job), and the
    plan; None when even `max_nodes` nodes are not enough."""
    from dataclasses import replace

    alone = estimate(model, replace(train, nproc=1, distributed="ddp"), gpu_memory)
    if alone.fits:
        return 1, "ddp", alone
    for nodes in range(1, max_nodes + 1):
        world = nodes * gpus_per_node
        plan = estimate(model, replace(train, nproc=world, distributed="fsdp"), gpu_memory)
        if plan.fits:
            return nodes, "fsdp", plan
    return None


def describe_nodes(
    needed: tuple[int, str, MemoryPlan] | None, gpus_per_node: int, gpu_memory: int
) -> str:
    """The planner's answer to 'how many nodes of which GPU'."""
    size = f"{gpus_per_node} x {gpu_memory / GiB:.0f} GiB GPUs"
    if needed is None:
        return f"[plan] does not fit on any number of nodes of {size}: use qlora or a shorter max_seq_length"
    nodes, how, plan = needed
    spread = (
        "each GPU holds the whole model (ddp); more nodes only add speed"
        if how == "ddp"
        else (f"fsdp shards the model over all {nodes * gpus_per_node} GPUs")
    )
    return (
        f"[plan] needs {nodes} node{'s' if nodes > 1 else ''} of {size}: {spread}; "
        f"{plan.total / GiB:.1f} GiB per GPU (train.nnodes: {nodes}, train.distributed: {how})"
    )


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a model folder (or the file itself)."""
    file = path / "config.json" if path.is_dir() else path
    data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return data


def gpu_memory_bytes() -> int | None:
    """Memory of the smallest visible GPU, or None without one."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    smallest: int = min(
        torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())
    )
    return smallest


def plan_for_run(model_dir: Path, recipe: Any, nproc: int = 1) -> MemoryPlan | None:
    """The plan of a recipe on this machine's GPUs; None on a machine without one (CPU training)."""
    memory = gpu_memory_bytes()
    if memory is None:
        return None
    train = recipe.train
    # DPO: a LoRA or QLoRA adapter whose forward pass holds chosen and rejected of each pair.
    pairs = 2 if train.method == "dpo" else 1
    batch, seq = train.batch_size * pairs, train.max_seq_length
    if (
        train.method != "dpo"
        and getattr(train, "packing", False)
        and getattr(train, "pack_tokens", None)
    ):
        # a packed SFT batch is one row of at most pack_tokens tokens (a longer example is alone)
        batch, seq = 1, max(train.pack_tokens, train.max_seq_length)
    shape = TrainingShape(
        method=train.adapter_method, batch=batch, seq=seq,
        rank=recipe.lora.r, targets=recipe.lora.target_modules,
        gradient_checkpointing=train.gradient_checkpointing,
        nproc=nproc, distributed="fsdp" if train.distributed == "fsdp" else "ddp",
        fused_loss=_liger_applies(model_dir, train),
    )  # fmt: skip
    return estimate(ModelShape.from_config(read_config(model_dir)), shape, memory)


def _liger_applies(model_dir: Path, train: Any) -> bool:
    """Whether training will patch in Liger's fused linear cross-entropy (train.py's apply_liger)."""
    from gapforge_runtime.data.packing import liger_blocker

    setting = getattr(train, "liger", False)
    if train.method == "dpo" or setting is False or setting == "false":
        return False
    return liger_blocker(model_dir, "cuda") is None


def describe(plan: MemoryPlan) -> str:
    """One line for the operator."""
    where = f" on {plan.nproc} GPUs" if plan.nproc > 1 else ""
    line = (
        f"[plan] {plan.method}: {plan.params / 1e9:.2f}B parameters, {plan.trainable_params / 1e6:.1f}M "
        f"trainable; estimated peak {plan.total / GiB:.1f} GiB per GPU{where} (weights "
        f"{plan.weights / GiB:.1f}, trainable state {plan.trainable_state / GiB:.1f}, activations "
        f"{plan.activations / GiB:.1f}, logits {plan.logits / GiB:.1f})"
    )
    if plan.gpu_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        line += f"; {verdict} in {plan.gpu_memory / GiB:.1f} GiB"
    return line


def refusal(plan: MemoryPlan) -> str:
    """The error when a run cannot fit, with the ways out."""
    return (
        f"the memory planner estimates {plan.total / GiB:.1f} GiB per GPU for this {plan.method} run, more "
        f"than the {(plan.gpu_memory or 0) / GiB:.1f} GiB of the GPU. Lower train.batch_size (raise "
        "train.gradient_accumulation to keep the effective batch) or train.max_seq_length, turn on "
        "train.gradient_checkpointing, use train.method 'qlora', or spread the model over more GPUs "
        "(--nproc N with train.distributed 'fsdp'). Set GAPFORGE_SKIP_MEMORY_CHECK=1 to try anyway."
    )
