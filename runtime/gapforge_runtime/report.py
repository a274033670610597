"""report.md and report.html (plain string templates) with PNG charts drawn by matplotlib (Agg)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from gapforge_runtime.files import write_text_atomic

HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}
.pass{{color:#060}}.fail{{color:#a00;font-weight:bold}}pre{{white-space:pre-wrap;background:#f4f4f4;padding:.5em}}</style>
</head><body>
<h1>{title}</h1>
<p>Verdict: <span class="{verdict_class}">{verdict}</span></p>
{body}
</body></html>
"""


def plot_losses(history: list[dict[str, Any]], out: Path) -> Path | None:
    """Training and validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def plot_quality_vs_size(models: dict[str, Any], out: Path) -> Path | None:
    """Test perplexity against file size, one point per model artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (name, m["size_bytes"] / 1e6, m["perplexity"])
        for name, m in models.items()
        if m["size_bytes"]
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, size, ppl in points:
        ax.scatter(size, ppl)
        ax.annotate(name, (size, ppl), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("test perplexity")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def plot_sweep(sweep: dict[str, Any], out: Path) -> Path | None:
    """Each trial's validation loss against the step (pruned ones dashed), the best one bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [
        t
        for t in sweep.get("trials", [])
        if t.get("intermediate") or t.get("eval_loss") is not None
    ]
    if not trials:
        return None
    best = sweep.get("best", {}).get("number")
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
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
    done = [t for t in trials if t.get("eval_loss") is not None]
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def sweep_rows(sweep: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The sweep's trials side by side: settings, validation loss, state, seconds; best marked."""
    names = sorted(sweep.get("space", {}))
    best = sweep.get("best", {}).get("number")
    rows = []
    for t in sweep.get("trials", []):
        # 3 significant digits: learning rates such as 2.5e-05 must not print as 0.0000
        params = [
            f"{v:.3g}" if isinstance(v, float) else v
            for v in (t["params"].get(n, "") for n in names)
        ]
        loss = t.get("eval_loss")
        rows.append([f"{t['number']}{' (best)' if t['number'] == best else ''}", *params,
                     "" if loss is None else float(loss), t["state"],
                     "" if t.get("seconds") is None else f"{t['seconds']:.1f}", t.get("note", "")])  # fmt: skip
    return ["trial", *names, "eval loss", "state", "seconds", "note"], rows


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> tuple[str, str]:
    md = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    md += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return "\n".join(md), f"<table><tr>{cells}</tr>{body}</table>"


def hygiene_rows(hygiene: dict[str, Any]) -> list[list[Any]]:
    """The data step's hygiene section as rows: counts, lines and actions, never a found value."""
    rows: list[list[Any]] = []
    pii = hygiene.get("pii", {})
    if pii.get("status") != "checked":
        rows.append(["personal data", pii.get("status", "not checked")])
    else:
        for kind, splits in sorted(pii["counts"].items()):
            where = ", ".join(f"{n} in {split}" for split, n in splits.items())
            lines = sorted({f["line"] for f in pii["findings"] if f["type"] == kind})
            shown = ", ".join(map(str, lines[:20])) + (" …" if len(lines) > 20 else "")
            rows.append([f"{kind} (policy {pii['policy'][kind]})", f"{where}; lines {shown}"])
        if not pii["counts"]:
            rows.append(["personal data", "none found"])
    dedupe = hygiene.get("dedupe", {})
    if dedupe.get("status") != "checked":
        rows.append(["near-duplicates", dedupe.get("status", "not checked")])
    else:
        for group in dedupe["groups"][:20]:
            dropped = ", ".join(f"{d['line']} (J={d['jaccard']:.2f})" for d in group["dropped"])
            rows.append(["near-duplicates", f"kept line {group['kept_line']}, dropped {dropped}"])
        for leak in dedupe["leaks"][:20]:
            rows.append([
                "leak into training",
                f"{leak['split']} line {leak['held_out_line']} ~ training line "
                f"{leak['train_line']} (J={leak['jaccard']:.2f}): training copy dropped",
            ])  # fmt: skip
        if not dedupe["groups"] and not dedupe["leaks"]:
            rows.append(["near-duplicates", "none found"])
    lengths = hygiene.get("lengths", {})
    for split in ("train", "validation", "test"):
        stats = lengths.get(split) or {}
        if stats.get("examples"):
            rows.append([
                f"{split} length ({lengths['unit']})",
                f"min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max "
                f"{stats['max']}; max_seq_length {lengths['max_seq_length']} cuts "
                f"{stats['cut_examples']} examples ({stats['cut_tokens']} tokens)",
            ])  # fmt: skip
    rows += [["not checked", note] for note in hygiene.get("not_checked", [])]
    return rows


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _model_order(names: Any) -> list[str]:
    """base, merged, then the quantized artefacts (JSON files keep keys sorted, not in run order)."""
    first = [n for n in ("base", "merged") if n in names]
    return first + sorted(n for n in names if n not in first)


def _comparison_sections(evaluation: dict[str, Any], section: Any) -> None:
    """The judge's win rates, the task metrics and the answers side by side."""
    judge = evaluation.get("judge") or {}
    if judge.get("enabled"):
        rows = [
            [
                f"{c['candidate']} vs {c['reference']}",
                f"{c['win_rate']:.3f}",
                f"{c['ci_low']:.3f} to {c['ci_high']:.3f}",
                c["wins"],
                c["losses"],
                c["ties"],
                c["inconsistent"],
                c["unparseable"],
                c["n"],
            ]
            for c in judge.get("comparisons", [])
        ]
        md_table, html_table = _table(
            [
                "pair",
                "win rate",
                "95% CI",
                "wins",
                "losses",
                "ties",
                "orders disagree",
                "unparseable verdicts",
                "prompts",
            ],
            rows,
        )
        about = (
            f"Judge: `{judge.get('model')}` ({judge.get('file')}), llama.cpp, greedy, "
            f"{judge.get('max_verdict_tokens')} verdict tokens, n_ctx {judge.get('n_ctx')}; "
            f"{judge.get('prompts')} prompts x 2 orders, {judge.get('calls')} calls in "
            f"{judge.get('seconds')} s. Win rate = (wins + ties/2) / n, 95% percentile bootstrap "
            f"({judge.get('bootstrap')} resamples). Limits: " + " ".join(judge.get("limits", []))
        )
        section(
            "Judged against the base",
            f"{about}\n\n{md_table}",
            f"<p>{html.escape(about)}</p>{html_table}",
        )
    elif judge:
        section(
            "Judged against the base", judge.get("note", ""), html.escape(judge.get("note", ""))
        )
    task = evaluation.get("task_metrics") or {}
    if task.get("enabled"):
        rows = [
            [name, f"{m['exact_match']:.1f}", f"{m['token_f1']:.1f}", f"{m['rouge_l']:.1f}", m["n"]]
            for name, m in ((n, task["models"][n]) for n in _model_order(task.get("models", {})))
        ]
        section(
            "Task metrics (points, against the test split's references)",
            *_table(["model", "exact match", "token F1", "ROUGE-L", "prompts"], rows),
        )
    elif task:
        section("Task metrics", task.get("note", ""), html.escape(task.get("note", "")))
    for note in evaluation.get("notes", []):
        section("Note", note, html.escape(note))
    samples = evaluation.get("samples", [])[: evaluation.get("samples_shown", 3)]
    if samples:
        models = _model_order(samples[0]["answers"])
        rows = [
            [_short(s.get("question", s["prompt"])), _short(s["reference"])]
            + [_short(s["answers"].get(m, "")) for m in models]
            for s in samples
        ]
        md_table, html_table = _table(["prompt", "reference", *models], rows)
        section("Answers side by side (greedy)", md_table, html_table)


def lm_eval_rows(lm_eval: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """lm-eval's scores as a table: one row per task and metric, one column per model."""
    targets = _model_order(lm_eval.get("targets", {}))
    rows: list[list[Any]] = []
    for task in lm_eval.get("tasks", []):
        metrics = sorted(
            {m for t in targets for m in lm_eval["targets"][t].get(task, {}).get("metrics", {})}
        )
        for metric in metrics:
            row: list[Any] = [task, metric]
            for target in targets:
                found = lm_eval["targets"][target].get(task, {})
                value, err = (
                    found.get("metrics", {}).get(metric),
                    found.get("stderr", {}).get(metric),
                )
                cell = "" if value is None else f"{value:.4f}" + (f" ± {err:.4f}" if err else "")
                row.append(cell)
            n = next(
                (
                    lm_eval["targets"][t][task].get("n")
                    for t in targets
                    if task in lm_eval["targets"][t]
                ),
                "",
            )
            rows.append([*row, n])
    return ["task", "metric", *targets, "documents"], rows


def _lm_eval_section(evaluation: dict[str, Any], section: Any) -> None:
    """The lm-evaluation-harness tasks, when the recipe runs them."""
    lm_eval = evaluation.get("lm_eval")
    if not lm_eval:
        return
    headers, rows = lm_eval_rows(lm_eval)
    md_table, html_table = _table(headers, rows)
    about = (
        f"lm-evaluation-harness {lm_eval.get('lm_eval_version')}, custom tasks of "
        f"`{lm_eval.get('tasks_folder')}/` over local JSONL, offline; limit "
        f"{lm_eval.get('limit') or 'none'}, few-shot {lm_eval.get('num_fewshot') or 'as the tasks say'}; "
        "GGUF files through llama.cpp in process (greedy generation), with the merged model's "
        f"tokenizer; {lm_eval.get('total_seconds')} s. ± is lm-eval's standard error."
    )
    notes = " ".join(lm_eval.get("notes", []))
    text = about + (f" Notes: {notes}" if notes else "")
    section(
        "lm-evaluation-harness tasks",
        f"{text}\n\n{md_table}",
        f"<p>{html.escape(text)}</p>{html_table}",
    )


def continual_table(continual: dict[str, Any]) -> tuple[str, str]:
    """Loss on the parent's test set and the new one, before (the parent) and after."""
    old, new = continual["old_test"], continual["new_test"]
    rows = [
        ["parent's test set (forgetting)", old["start"], old["trained"],
         f"{continual['forgetting_pct']:+.2f}%"],
        ["this run's test set", new["start"], new["trained"],
         f"{(new['trained'] - new['start']) / new['start'] * 100:+.2f}%" if new["start"] else ""],
    ]  # fmt: skip
    md, html_text = _table(["test set", "loss of the parent", "loss after", "change"], rows)
    parent = continual["parent"]
    note = (
        f"Continued from {parent['recipe']['name']} {parent['recipe']['version']} "
        f"({parent['path']}; manifest sha256 {parent['manifest_sha256'][:16]}, adapter "
        f"{parent['adapter_sha256'][:16]}); {continual['replay_ratio']:.0%} of the training set "
        "replayed from its training split. Here `base` is the parent's merged model."
    )
    return md + "\n\n" + note, html_text + f"<p>{html.escape(note)}</p>"


def preference_table(preference: dict[str, Any]) -> tuple[str, str]:
    """DPO's held-out pairs, before (the starting model) and after training."""
    rows = [
        [label, preference[key]["start"], preference[key]["trained"]]
        for key, label in (
            ("reward_accuracy", "preference accuracy (implicit reward, chosen above rejected)"),
            ("reward_margin", "mean reward margin (beta x log-ratio, chosen minus rejected)"),
            (
                "logp_accuracy",
                "log-prob accuracy (the model alone: log p(chosen) > log p(rejected))",
            ),
            ("logp_margin", "mean log-prob margin (chosen minus rejected)"),
        )
    ]
    md, html_text = _table(["measure", "starting model", "trained"], rows)
    note = (
        f"{preference['pairs']} held-out pairs, beta {preference['beta']}. The reference of the "
        "implicit reward is the starting model, so before training every margin is 0 and the "
        "accuracy 0.5 (ties count half)."
    )
    return md + "\n\n" + note, html_text + f"<p>{html.escape(note)}</p>"


def write_report(
    out_dir: Path, manifest: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Path]:
    """Write the charts, report.md and report.html; return their paths."""
    evaluation = manifest.get("evaluation") or {}
    models = evaluation.get("models", {})
    plots = out_dir / "plots"
    charts = {
        "Loss curves": plot_losses(history, plots / "loss.png"),
        "Quality vs size": plot_quality_vs_size(models, plots / "quality_vs_size.png"),
    }
    if manifest.get("sweep"):
        charts["Sweep"] = plot_sweep(manifest["sweep"], plots / "sweep.png")
    recipe = manifest["recipe"]
    title = f"{recipe.get('name')} {recipe.get('version')}: fine-tuning report"
    passed = evaluation.get("passed")
    verdict = "not evaluated" if passed is None else "PASS" if passed else "FAIL"
    md: list[str] = [f"# {title}", "", f"Verdict: **{verdict}**", ""]
    parts: list[str] = []

    def section(name: str, md_text: str, html_text: str) -> None:
        md.extend([f"## {name}", "", md_text, ""])
        parts.append(f"<h2>{html.escape(name)}</h2>{html_text}")

    data = manifest.get("data") or {}
    if data:
        rows = [[k, v] for k, v in data.items() if not isinstance(v, dict | list)]
        section("Data", *_table(["item", "value"], rows))
        if data.get("hygiene"):
            section("Data hygiene", *_table(["check", "result"], hygiene_rows(data["hygiene"])))
    training = manifest.get("training") or {}
    if training:
        rows = [[k, v] for k, v in training.items() if not isinstance(v, dict | list)]
        section("Training", *_table(["item", "value"], rows))
    sweep = manifest.get("sweep") or {}
    if sweep:
        headers, sweep_table = sweep_rows(sweep)
        about = (f"{len(sweep_table)} trials (Optuna, journal {sweep.get('journal')}); metric "
                 f"{sweep.get('metric')}, lower is better; the best trial's adapter is the one shipped.")  # fmt: skip
        md_table, html_table = _table(headers, sweep_table)
        section("Sweep", f"{about}\n\n{md_table}", f"<p>{html.escape(about)}</p>{html_table}")
    deltas = evaluation.get("delta_vs_merged_pct", {})
    rows = [
        [
            name,
            m["loss"],
            m["perplexity"],
            f"{deltas[name]:+.2f}%" if name in deltas else "",
            f"{m['size_bytes'] / 1e6:.1f} MB",
        ]
        for name, m in models.items()
    ]
    if rows:
        section(
            "Test split quality",
            *_table(["model", "loss", "perplexity", "Δ ppl vs merged", "size"], rows),
        )
    continual = evaluation.get("continual")
    if continual:
        section("Continual learning", *continual_table(continual))
    preference = evaluation.get("preference")
    if preference:
        section("Preference accuracy", *preference_table(preference))
    gates = evaluation.get("gates", [])
    if gates:
        g_rows = [[g["name"], "pass" if g["passed"] else "FAIL", g["detail"]] for g in gates]
        section("Gates", *_table(["gate", "result", "detail"], g_rows))
    for name, chart in charts.items():
        if chart is not None:
            encoded = base64.b64encode(chart.read_bytes()).decode()
            section(
                name,
                f"![{name}](plots/{chart.name})",
                f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">',
            )
    _comparison_sections(evaluation, section)
    _lm_eval_section(evaluation, section)
    outputs = manifest.get("outputs", {})
    o_rows = [
        [name, o.get("path", ""), o.get("size", 0), str(o.get("sha256", ""))[:16]]
        for name, o in outputs.items()
    ]
    section("Outputs", *_table(["artifact", "path", "bytes", "sha256 (first 16)"], o_rows))
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_text_atomic(md_path, "\n".join(md) + "\n")
    write_text_atomic(
        html_path,
        HTML_PAGE.format(
            title=html.escape(title),
            verdict=verdict,
            verdict_class="pass" if passed else "fail",
            body="\n".join(parts),
        ),
    )
    return {
        "report.md": md_path,
        "report.html": html_path,
        **{f"plots/{p.name}": p for p in charts.values() if p},
    }
