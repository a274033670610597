"""Model FLOPs utilization of an adapter training: what a team paying for GPU hours reads first.

Model FLOPs of one example of n tokens, forward and backward, with the base frozen (LoRA, QLoRA):
4·N·n (forward 2·N·n, backward through the frozen weights 2·N·n: no weight gradients) plus
12·L·h·n² for attention's scores (PaLM, appendix B); padding, recomputation and the adapter's own
small matmuls are not counted. MFU is the achieved model FLOP/s over the GPUs' dense bf16 peak.
The same formulas give the figures of `nox -s bench-gpu` (benchmarks/bench_gpu*.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
"""Dense bf16 tensor-core peaks of the SXM parts (NVIDIA's data sheets), by a name's substring."""


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name (torch.cuda.get_device_name), or None if unknown."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def model_flops(lengths: Sequence[int], params: int, layers: int, hidden: int) -> float:
    """Useful model FLOPs of a forward and backward over examples of these lengths."""
    return float(sum(4 * params * n + 12 * layers * hidden * n * n for n in lengths))


@dataclass(frozen=True)
class Utilization:
    model_tflops_per_second: float
    mfu_pct: float | None
    """None where the GPU's peak is not known (or training ran on the CPU)."""
    gpu_hours: float


def utilization(
    tokens: int,
    seconds: float,
    mean_square_length: float,
    params: int,
    layers: int,
    hidden: int,
    gpus: int,
    peak: float | None,
) -> Utilization | None:
    """From what training reports: `tokens` trained over `seconds` (all ranks), and the train set's
    token-weighted mean length (Σn²/Σn: exact for attention's term when every example is seen
    equally often). None without tokens or time."""
    if tokens <= 0 or seconds <= 0:
        return None
    flops = 4.0 * params * tokens + 12.0 * layers * hidden * tokens * mean_square_length
    achieved = flops / seconds / 1e12
    mfu = round(100 * achieved / (peak * gpus), 1) if peak and gpus > 0 else None
    return Utilization(round(achieved, 1), mfu, round(gpus * seconds / 3600, 4))


def mean_square_length(lengths: Sequence[int]) -> float:
    """Σn²/Σn of the examples' lengths (0 for none)."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0
