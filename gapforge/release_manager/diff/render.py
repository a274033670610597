"""A BundleDiff as plain text (a terminal), Markdown (release notes) or JSON (stable keys)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from gapforge.bundle.runbook import human_size
from gapforge.release_manager.diff.results import (
    BundleDiff,
    Figure,
    KeyedChanges,
    LayersDiff,
    ModelDiff,
    PackageDiff,
    TensorChanges,
)
from gapforge.release_manager.diff.safetensors import TensorDigest

DIFF_SCHEMA = "gapforge/release_manager/diff/v1"
ABSENT = "—"
NOT_VERIFIED = "what the bundles say about themselves, not verified: run 'gapforge verify' on each to check them"
UNCHANGED = "unchanged"


def show(value: Any) -> str:
    """A recipe value as the JSON it is, strings bare: `0.0001`, `lora`, `null`, `true`."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def show_figure(value: Any) -> str:
    if value is None:
        return ABSENT
    if isinstance(value, float):
        return f"{value:.6g}"
    return show(value)


def size_text(size: int) -> str:
    """`272.6 MB (272,599,040 bytes)`: human-readable and exact."""
    return f"{human_size(size)} ({size:,} bytes)"


def figure_change(figure: Figure) -> str:
    """`+0.0123 (+1.2%)` for numbers, `changed` for other values, '' when the same."""
    a, b = figure.a, figure.b
    if figure.same:
        return ""
    if a is None or b is None:
        return "only in B" if a is None else "only in A"
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if not numbers:
        return "changed"
    delta = b - a
    text = f"{delta:+.6g}"
    return f"{text} ({delta / abs(a) * 100:+.1f}%)" if a else text


# --- rows, shared by the text and Markdown renderers -------------------------------------------------


def _keyed_rows(changes: KeyedChanges, short: bool = False) -> list[tuple[str, str, str]]:
    """(key, A, B) for every added, removed and changed key, sorted by key."""

    def cut(value: Any) -> str:
        text = show(value)
        return text[:12] if short else text

    rows = [(k, ABSENT, cut(v)) for k, v in changes.added.items()]
    rows += [(k, cut(v), ABSENT) for k, v in changes.removed.items()]
    rows += [(k, cut(old), cut(new)) for k, (old, new) in changes.changed.items()]
    return sorted(rows)


def _recipe_rows(diff: BundleDiff) -> list[tuple[str, str, str]]:
    recipe = diff.recipe
    rows = []
    for label, (a, b) in (("bundle name", recipe.name), ("bundle version", recipe.version)):
        if a != b:
            rows.append((label, a, b))
    return rows + _keyed_rows(recipe.keys)


def _package_summary(packages: PackageDiff) -> str:
    (source_a, source_b), (count_a, count_b) = packages.source, packages.count
    changes = packages.changes
    read = (
        f"read from {source_a or 'nothing'}"
        if source_a == source_b
        else f"read from {source_a or 'nothing'} (A) and {source_b or 'nothing'} (B)"
    )
    counts = f"{count_a} → {count_b} packages" if count_a != count_b else f"{count_a} packages"
    if changes.unchanged:
        return f"{counts}, {read}"
    tally = f"{len(changes.changed)} changed, {len(changes.added)} added, {len(changes.removed)} removed"
    return f"{counts}, {read}; {tally}"


def _model_rows(model: ModelDiff) -> list[tuple[str, str, str]]:
    rows = [
        (label, a, b)
        for label, (a, b) in (("id", model.id), ("revision", model.revision))
        if a != b
    ]
    rows += [(f"file {k}", a, b) for k, a, b in _keyed_rows(model.files, short=True)]
    rows += [(f"locked input {k}", a, b) for k, a, b in _keyed_rows(model.inputs, short=True)]
    return rows


def _tensor_text(tensor: TensorDigest | None) -> str:
    return ABSENT if tensor is None else f"{tensor.describe()} {tensor.sha256[:12]}"


def _tensor_rows(tensors: TensorChanges) -> list[tuple[str, str, str]]:
    rows = [(name, ABSENT, _tensor_text(t)) for name, t in tensors.added.items()]
    rows += [(name, _tensor_text(t), ABSENT) for name, t in tensors.removed.items()]
    rows += [(name, _tensor_text(a), _tensor_text(b)) for name, (a, b) in tensors.changed.items()]
    return sorted(rows)


def _tensor_summary(tensors: TensorChanges) -> str:
    if tensors.skipped:
        return f"{tensors.file}: tensors not compared: {tensors.skipped}"
    return (
        f"{tensors.file}: tensors {len(tensors.changed)} changed, {len(tensors.added)} added, "
        f"{len(tensors.removed)} removed, {tensors.same} unchanged"
    )


def _layer_rows(layers: LayersDiff) -> list[tuple[str, str, str, str]]:
    """(layer, digest, size, status) for B's layers in order, then A's dropped ones."""
    shared = {x.digest for x in layers.shared}
    rows = [
        (
            x.name,
            x.digest.removeprefix("sha256:")[:12],
            size_text(x.size),
            "shared" if x.digest in shared else "new",
        )
        for x in layers.in_b
    ]
    rows += [
        (x.name, x.digest.removeprefix("sha256:")[:12], size_text(x.size), "dropped (only in A)")
        for x in layers.dropped
    ]
    return rows


def _transfer_rows(diff: BundleDiff) -> list[tuple[str, str]]:
    transfer = diff.transfer
    rows = [
        (f"new layers ({len(diff.layers.new)})", size_text(transfer.layer_bytes)),
        ("image config and manifest", size_text(transfer.image_metadata_bytes)),
    ]
    rows += [(f"file {name}", size_text(size)) for name, size in transfer.files.items()]
    rows += [(f"file {name}", "removed in B") for name in transfer.removed_files]
    rows.append(("total to cross the gap", size_text(transfer.total)))
    return rows


def _figure_rows(diff: BundleDiff) -> list[tuple[str, str, str, str]]:
    return [
        (f.label, show_figure(f.a), show_figure(f.b), figure_change(f))
        for f in diff.pretest.figures
    ]


# --- plain text --------------------------------------------------------------------------------------


def _aligned(rows: Sequence[tuple[str, ...]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        (
            indent
            + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        ).rstrip()
        for row in rows
    ]


def _changes_text(rows: list[tuple[str, str, str]], indent: str = "  ") -> list[str]:
    """`key: old → new`, the values lined up."""
    width = max((len(key) for key, _, _ in rows), default=0) + 1
    return [f"{indent}{(key + ':').ljust(width)} {a} → {b}" for key, a, b in rows]


def render_text(diff: BundleDiff) -> str:
    """The diff for a terminal: one titled section each, columns aligned, no colour."""
    a, b = diff.labels
    out = [f"gapforge diff: A {a} ({diff.a}) → B {b} ({diff.b})", f"({NOT_VERIFIED})", ""]

    def section(title: str, unchanged: bool, body: list[str], summary: str = "") -> None:
        out.append(
            f"{title}: {UNCHANGED}" + (f" ({summary})" if summary else "") if unchanged else title
        )
        if not unchanged:
            out.extend([f"  {summary}"] * bool(summary) + body)
        out.append("")

    section("Recipe and hyper-parameters", diff.recipe.unchanged, _changes_text(_recipe_rows(diff)))
    for packages, title in ((diff.python, "Python packages"), (diff.debian, "Debian packages")):
        section(
            title,
            packages.unchanged,
            _changes_text(_keyed_rows(packages.changes)),
            _package_summary(packages),
        )
    model_body = _changes_text(_model_rows(diff.model))
    for tensors in diff.model.tensors:
        model_body += [
            f"  {_tensor_summary(tensors)}",
            *_changes_text(_tensor_rows(tensors), "    "),
        ]
    section("Model", diff.model.unchanged, model_body)
    layer_lines = _aligned([("layer", "digest", "size", "in B"), *_layer_rows(diff.layers)])
    summary = f"{len(diff.layers.shared)} shared, {len(diff.layers.new)} new, {len(diff.layers.dropped)} dropped"
    section("Layers", diff.layers.unchanged, layer_lines, summary)
    out.append("To deliver B to a site that holds A")
    out += _aligned([(f"{label}:", value) for label, value in _transfer_rows(diff)])
    out.append("")
    figures = _aligned([("figure", "A", "B", "change"), *_figure_rows(diff)])
    section("Pretest and evaluation", diff.pretest.unchanged, figures)
    if diff.notes:
        out += ["Notes"] + [f"  {note}" for note in diff.notes] + [""]
    return "\n".join(out).rstrip() + "\n"


# --- Markdown ----------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def render_markdown(diff: BundleDiff) -> str:
    """The diff as release notes: a heading per section, tables for the changes."""
    a, b = diff.labels
    out = [f"# Changes from {a} to {b}", "", f"_{NOT_VERIFIED}._", ""]

    def section(title: str, unchanged: bool, body: list[str], summary: str = "") -> None:
        out.extend([f"## {title}", ""])
        if summary:
            out.extend([summary[0].upper() + summary[1:] + ".", ""])
        out.extend([f"{UNCHANGED.capitalize()}.", ""] if unchanged else body)

    section(
        "Recipe and hyper-parameters",
        diff.recipe.unchanged,
        _table(("key", "A", "B"), _recipe_rows(diff)),
    )
    for packages, title in ((diff.python, "Python packages"), (diff.debian, "Debian packages")):
        body = _table(("package", "A", "B"), _keyed_rows(packages.changes))
        section(title, packages.unchanged, body, _package_summary(packages))
    body = _table(("model", "A", "B"), _model_rows(diff.model))
    for tensors in diff.model.tensors:
        body += [f"### {tensors.file}", "", _tensor_summary(tensors) + ".", ""]
        if not tensors.skipped:
            body += _table(("tensor", "A", "B"), _tensor_rows(tensors))
    section("Model", diff.model.unchanged, body)
    summary = f"{len(diff.layers.shared)} shared, {len(diff.layers.new)} new, {len(diff.layers.dropped)} dropped"
    section(
        "Layers",
        diff.layers.unchanged,
        _table(("layer", "digest", "size", "in B"), _layer_rows(diff.layers)),
        summary,
    )
    out += [
        "## To deliver B to a site that holds A",
        "",
        *_table(("what", "bytes"), _transfer_rows(diff)),
    ]
    section(
        "Pretest and evaluation",
        diff.pretest.unchanged,
        _table(("figure", "A", "B", "change"), _figure_rows(diff)),
    )
    if diff.notes:
        out += ["## Notes", ""] + [f"- {note}" for note in diff.notes] + [""]
    return "\n".join(out).rstrip() + "\n"


# --- JSON --------------------------------------------------------------------------------------------


def _keyed_json(changes: KeyedChanges) -> dict[str, Any]:
    return {
        "added": changes.added,
        "removed": changes.removed,
        "changed": {k: {"a": old, "b": new} for k, (old, new) in changes.changed.items()},
    }


def _tensor_json(tensors: TensorChanges) -> dict[str, Any]:
    def digest(t: TensorDigest) -> dict[str, Any]:
        return {"dtype": t.dtype, "shape": list(t.shape), "sha256": t.sha256, "size": t.size}

    return {
        "file": tensors.file,
        "skipped": tensors.skipped,
        "added": {k: digest(t) for k, t in tensors.added.items()},
        "removed": {k: digest(t) for k, t in tensors.removed.items()},
        "changed": {k: {"a": digest(a), "b": digest(b)} for k, (a, b) in tensors.changed.items()},
        "unchanged_count": tensors.same,
    }


def _ab(pair: tuple[Any, Any]) -> dict[str, Any]:
    return {"a": pair[0], "b": pair[1]}


def diff_json(diff: BundleDiff) -> dict[str, Any]:
    """The diff as JSON-able data with stable keys (schema gapforge/release_manager/diff/v1)."""
    model, layers, transfer = diff.model, diff.layers, diff.transfer
    return {
        "schema": DIFF_SCHEMA,
        "verified": False,
        "a": {"path": str(diff.a), "label": diff.labels[0]},
        "b": {"path": str(diff.b), "label": diff.labels[1]},
        "unchanged": diff.unchanged,
        "recipe": {
            "unchanged": diff.recipe.unchanged,
            "name": _ab(diff.recipe.name),
            "version": _ab(diff.recipe.version),
            **_keyed_json(diff.recipe.keys),
        },
        "packages": {
            p.kind: {
                "unchanged": p.unchanged,
                "source": _ab(p.source),
                "count": _ab(p.count),
                **_keyed_json(p.changes),
            }
            for p in (diff.python, diff.debian)
        },
        "model": {
            "unchanged": model.unchanged,
            "id": _ab(model.id),
            "revision": _ab(model.revision),
            "files": _keyed_json(model.files),
            "inputs": _keyed_json(model.inputs),
            "tensors": [_tensor_json(t) for t in model.tensors],
        },
        "layers": {
            "unchanged": layers.unchanged,
            "shared": [asdict(x) for x in layers.shared],
            "new": [asdict(x) for x in layers.new],
            "dropped": [asdict(x) for x in layers.dropped],
        },
        "transfer": {
            "layer_bytes": transfer.layer_bytes,
            "image_metadata_bytes": transfer.image_metadata_bytes,
            "files": transfer.files,
            "removed_files": transfer.removed_files,
            "total_bytes": transfer.total,
        },
        "pretest": {
            "unchanged": diff.pretest.unchanged,
            "figures": [
                {"label": f.label, "a": f.a, "b": f.b, "same": f.same} for f in diff.pretest.figures
            ],
        },
        "notes": diff.notes,
    }
