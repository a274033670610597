"""The report's charts, drawn by matplotlib (Agg, no display) as figures first, then saved.

Each chart is built by a function returning the Figure, so a test can measure its text boxes
before it is written: labels must never print on top of each other, which is why the artefacts'
cost is a pair of bar charts with one row per artefact (a scatter of near-identical points put
`merged` and `gguf:f16` on the same spot).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gapforge_runtime.report.labels import finite, model_label, model_order


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: Path) -> Path:
    """Write a figure as PNG (no software tag: the same run draws the same bytes) and free it."""
    plt = _pyplot()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def loss_figure(history: list[dict[str, Any]]) -> Any | None:
    """Training loss per logged step, the validation evaluations marked as points on it."""
    train = [(h["step"], h["loss"]) for h in history if finite(h.get("loss")) and "step" in h]
    evals = [
        (h["step"], h["eval_loss"]) for h in history if finite(h.get("eval_loss")) and "step" in h
    ]
    if not train and not evals:
        return None
    fig, ax = _pyplot().subplots(figsize=(6.4, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:blue", label="training loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), color="tab:orange", marker="o", markersize=6,
                linestyle="--", label=f"validation loss ({len(evals)} evaluations)")  # fmt: skip
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def cost_rows(
    models: Mapping[str, Any], deltas: Mapping[str, float]
) -> list[tuple[str, float, float]]:
    """(label, perplexity change vs merged in %, size in MB) for the merged model and each
    artefact, in pipeline order (largest first); the base is the fine-tune's question, not a cost."""
    sizes = {n: m.get("size_bytes") or 0 for n, m in models.items()}
    rows = []
    for name in model_order(models, sizes):
        if name == "base" or not sizes[name]:
            continue
        delta = 0.0 if name == "merged" else deltas.get(name)
        if finite(delta):
            rows.append((model_label(name), float(delta or 0.0), sizes[name] / 1e6))
    return rows


def cost_figure(models: Mapping[str, Any], deltas: Mapping[str, float]) -> Any | None:
    """Two bar charts side by side, one row per artefact: perplexity change against the merged
    model, and file size; each bar carries its value."""
    rows = cost_rows(models, deltas)
    if not rows:
        return None
    labels = [r[0] for r in rows]
    fig, (quality, size) = _pyplot().subplots(
        1, 2, sharey=True, figsize=(8.0, 1.2 + 0.55 * len(rows)), dpi=100
    )
    ys = list(range(len(rows)))
    bars = quality.barh(ys, [r[1] for r in rows], color="tab:orange", height=0.6)
    quality.bar_label(bars, labels=["reference" if i == 0 else f"{r[1]:+.2f}%" for i, r in
                                    enumerate(rows)], padding=4, fontsize=8)  # fmt: skip
    low, high = min(0.0, *(r[1] for r in rows)), max(0.0, *(r[1] for r in rows))
    span = (high - low) or 1.0
    # Room on both sides for a value label, so none reaches the row labels or the other chart.
    quality.set_xlim(low - (0.6 * span if low < 0 else 0.05 * span), high + 0.6 * span)
    quality.axvline(0.0, color="black", linewidth=0.8)
    quality.set_title("perplexity vs merged (%)", fontsize=9)
    bars = size.barh(ys, [r[2] for r in rows], color="tab:blue", height=0.6)
    size.bar_label(bars, labels=[f"{r[2]:,.1f} MB" for r in rows], padding=4, fontsize=8)
    size.set_xlim(0, max(r[2] for r in rows) * 1.5)
    size.set_title("file size (MB)", fontsize=9)
    quality.set_yticks(ys, labels)
    quality.invert_yaxis()  # pipeline order reads top to bottom
    for ax in (quality, size):
        ax.grid(alpha=0.3, axis="x")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(sweep: Mapping[str, Any]) -> Any | None:
    """Each trial's validation loss against the step (pruned ones dashed), the best one bold;
    beside it each finished trial's final validation loss."""
    trials = [
        t for t in sweep.get("trials", []) if t.get("intermediate") or finite(t.get("eval_loss"))
    ]
    if not trials:
        return None
    best = sweep.get("best", {}).get("number")
    fig, (curves, finals) = _pyplot().subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for t in trials:
        steps = [int(k) for k in t.get("intermediate", {})]
        losses = list(t.get("intermediate", {}).values())
        if steps:
            curves.plot(steps, losses, marker="o", markersize=3,
                        linestyle="--" if t["state"] == "PRUNED" else "-",
                        linewidth=2.5 if t["number"] == best else 1.0, label=f"trial {t['number']}")  # fmt: skip
    curves.set_xlabel("optimizer step")
    curves.set_ylabel("validation loss")
    curves.grid(alpha=0.3)
    if len(trials) <= 12:
        curves.legend(fontsize=7)
    done = [t for t in trials if finite(t.get("eval_loss"))]
    finals.bar([str(t["number"]) for t in done], [t["eval_loss"] for t in done],
               color=["tab:green" if t["number"] == best else "tab:gray" for t in done])  # fmt: skip
    finals.set_xlabel("trial")
    finals.set_ylabel("final validation loss")
    if done:
        low = min(t["eval_loss"] for t in done)
        high = max(t["eval_loss"] for t in done)
        finals.set_ylim(max(0.0, low - (high - low) * 0.5 - 0.01), high + (high - low) * 0.1 + 0.01)
    finals.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
