"""The run's detail sections: data, its hygiene, training, the sweep and the output files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gapforge_runtime.report.document import Section, Table, Text
from gapforge_runtime.report.labels import (
    data_rows,
    finite,
    model_label,
    size_text,
    split_rows,
    training_rows,
)


def data_sections(data: Mapping[str, Any]) -> list[Section]:
    """The data step's figures, one row per split, and its hygiene checks."""
    if not data:
        return []
    blocks: list[Any] = [Table(["item", "value"], data_rows(data))]
    splits = split_rows(data)
    if splits:
        headers = ["split", "examples", "tokens", "cut at max_seq_length",
                   "dropped (nothing left to train on)"]  # fmt: skip
        blocks.append(Table(headers, splits))
    sections = [Section("Data", blocks)]
    if data.get("hygiene"):
        rows = hygiene_rows(data["hygiene"])
        sections.append(Section("Data hygiene", [Table(["check", "result"], rows)]))
    return sections


def hygiene_rows(hygiene: Mapping[str, Any]) -> list[list[str]]:
    """The data step's hygiene section as rows: counts, lines and actions, never a found value."""
    rows: list[list[str]] = []
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
    rows += [["not checked", str(note)] for note in hygiene.get("not_checked", [])]
    return rows


def training_section(training: Mapping[str, Any]) -> Section | None:
    """What training did; GPU figures only where a GPU trained."""
    rows = training_rows(training)
    return Section("Training", [Table(["item", "value"], rows)]) if rows else None


def sweep_rows(sweep: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The sweep's trials side by side: settings, validation loss, state, seconds; best marked."""
    names = sorted(sweep.get("space", {}))
    best = sweep.get("best", {}).get("number")
    rows = []
    for t in sweep.get("trials", []):
        # 3 significant digits: learning rates such as 2.5e-05 must not print as 0.0000
        params = [
            f"{v:.3g}" if isinstance(v, float) else str(v)
            for v in (t["params"].get(n, "") for n in names)
        ]
        loss, seconds = t.get("eval_loss"), t.get("seconds")
        rows.append([f"{t['number']}{' (best)' if t['number'] == best else ''}", *params,
                     f"{loss:.4f}" if finite(loss) else "", t["state"],
                     f"{seconds:.1f}" if finite(seconds) else "", t.get("note") or ""])  # fmt: skip
    return ["trial", *names, "validation loss", "state", "seconds", "note"], rows


def sweep_section(sweep: Mapping[str, Any]) -> Section | None:
    """The sweep's trials (the shipped adapter is the best one's)."""
    if not sweep:
        return None
    headers, rows = sweep_rows(sweep)
    about = (
        f"{len(rows)} trials (Optuna, journal {sweep.get('journal')}); metric "
        f"{sweep.get('metric')}, lower is better; the best trial's adapter is the one shipped."
    )
    return Section("Sweep", [Text(about), Table(headers, rows)])


OUTPUT_LABELS = {
    "adapter": "LoRA adapter",
    "adapter:gguf": "LoRA adapter (GGUF)",
    "judge:base-gguf": "judge (the base model as GGUF F16)",
    "train_log": "training log",
    "evaluation": "evaluation",
    "sweep:summary": "sweep summary",
    "sweep:journal": "sweep journal (Optuna)",
}


def output_label(name: str) -> str:
    """The reader's name of a manifest output key."""
    if name in OUTPUT_LABELS:
        return OUTPUT_LABELS[name]
    if name.startswith("split:"):
        return f"{name.removeprefix('split:')} split"
    if name.endswith(":Modelfile"):
        return f"Ollama Modelfile for {model_label(name.removesuffix(':Modelfile'))}"
    return model_label(name)


def outputs_section(outputs: Mapping[str, Any]) -> Section:
    """Every output file or folder with its size and the start of its digest."""
    rows = [
        [output_label(name), f"`{o.get('path', '')}`",
         size_text(o["size"]) if finite(o.get("size")) else "", str(o.get("sha256", ""))[:16]]
        for name, o in outputs.items()
    ]  # fmt: skip
    return Section("Outputs", [Table(["artefact", "path", "size", "sha256 (first 16)"], rows)])
