"""report.md and report.html at the end of a run: the verdict first, then the details.

The content is built once (`build_document`: sections of blocks) and rendered twice, so the two
files say the same. The charts are PNGs under plots/, linked from report.md and inlined in
report.html. The artefact-cost chart keeps its historical file name, plots/quality_vs_size.png,
which the manifest and its readers already name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gapforge_runtime.files import write_text_atomic
from gapforge_runtime.report import eval_sections as ev
from gapforge_runtime.report import run_sections as run
from gapforge_runtime.report.document import (
    Bullets,
    Document,
    Figure,
    Section,
    Text,
    render_html,
    render_markdown,
)
from gapforge_runtime.report.plots import cost_figure, loss_figure, save_figure, sweep_figure
from gapforge_runtime.report.verdict import verdict_items

__all__ = ["build_document", "draw_charts", "write_report"]

CHART_FILES = {
    "loss": "loss.png",
    "cost": "quality_vs_size.png",
    "sweep": "sweep.png",
}


def draw_charts(
    plots: Path, manifest: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Path]:
    """Draw every chart the run has data for; return {chart: PNG path}."""
    evaluation = manifest.get("evaluation") or {}
    figures = {
        "loss": loss_figure(history),
        "cost": cost_figure(
            evaluation.get("models") or {}, evaluation.get("delta_vs_merged_pct") or {}
        ),
        "sweep": sweep_figure(manifest["sweep"]) if manifest.get("sweep") else None,
    }
    return {
        name: save_figure(fig, plots / CHART_FILES[name])
        for name, fig in figures.items()
        if fig is not None
    }


def _verdict_word(evaluation: dict[str, Any]) -> str:
    passed = evaluation.get("passed")
    if passed is None:
        return "not evaluated"
    failed = [g["name"] for g in evaluation.get("gates") or [] if not g["passed"]]
    if passed:
        return "PASS (every gate of the recipe passed)"
    return "FAIL (gate " + ", ".join(failed) + " failed)" if failed else "FAIL"


def build_document(manifest: dict[str, Any], charts: dict[str, Path]) -> Document:
    """The report's content, in reading order: verdict, quality, gates, comparisons, run details."""
    evaluation = manifest.get("evaluation") or {}
    recipe = manifest["recipe"]
    sections: list[Section | None] = [
        Section("Verdict", [Bullets(verdict_items(evaluation))]),
        ev.quality_section(evaluation),
        ev.gates_section(evaluation),
    ]
    if "cost" in charts:
        about = "Per artefact, against the merged model; rows in pipeline order, largest first."
        sections.append(
            Section(
                "Cost of each artefact",
                [Text(about), Figure("Cost of each artefact", charts["cost"])],
            )
        )
    sections += [
        ev.judge_section(evaluation),
        ev.task_section(evaluation),
        ev.samples_section(evaluation),
        ev.lm_eval_section(evaluation),
        ev.continual_section(evaluation),
        ev.preference_section(evaluation),
    ]
    notes = evaluation.get("notes") or []
    if notes:
        sections.append(Section("Notes", [Text(note) for note in notes]))
    if "loss" in charts:
        about = "Training loss per logged step; each validation evaluation is a marked point."
        sections.append(
            Section("Loss curves", [Text(about), Figure("Loss curves", charts["loss"])])
        )
    sections.append(run.training_section(manifest.get("training") or {}))
    sweep = run.sweep_section(manifest.get("sweep") or {})
    if sweep is not None and "sweep" in charts:
        sweep.blocks.append(Figure("Sweep", charts["sweep"]))
    sections.append(sweep)
    sections += run.data_sections(manifest.get("data") or {})
    sections.append(run.outputs_section(manifest.get("outputs") or {}))
    return Document(
        title=f"{recipe.get('name')} {recipe.get('version')}: fine-tuning report",
        verdict=_verdict_word(evaluation),
        passed=evaluation.get("passed"),
        sections=[s for s in sections if s is not None],
    )


def write_report(
    out_dir: Path, manifest: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Path]:
    """Write the charts, report.md and report.html; return their paths."""
    charts = draw_charts(out_dir / "plots", manifest, history)
    doc = build_document(manifest, charts)
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(md_path, render_markdown(doc))
    write_text_atomic(html_path, render_html(doc))
    return {
        "report.md": md_path,
        "report.html": html_path,
        **{f"plots/{p.name}": p for p in charts.values()},
    }
