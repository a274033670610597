"""The runtime's Trainer path on a GPU: padded vs packed (flex attention, Liger, fused AdamW), tiny Llama.

`python benchmarks/gpu_packing_trainer.py` (needs pytest for the test fixtures it reuses): 6 steps and 2
evaluations of `train_adapter` with train.packing false, true, and true with a 512-token budget;
prints the three loss curves and the largest relative difference between padded and packed.
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(here), str(here / "runtime")]
from tests.runtime.conftest import make_tiny_model  # noqa: E402
from tests.runtime.test_packing import train_losses  # noqa: E402

root = Path("/tmp/tc")
model = make_tiny_model(root / "model")
padded = train_losses(root, model, "padded", packing=False)
packed = train_losses(root, model, "packed", packing=True)
budget = train_losses(root, model, "budget", packing=True, pack_tokens=512)
print("padded", [round(x, 4) for x in padded])
print("packed", [round(x, 4) for x in packed])
print("budget", [round(x, 4) for x in budget])
print("max rel diff padded/packed", max(abs(a - b) / abs(a) for a, b in zip(padded, packed, strict=True)))
