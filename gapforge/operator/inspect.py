"""`gapforge inspect`: what a bundle holds (recipe, model, packages, digests, pretest), as a table or
JSON. The command shows a bundle the trust gate proved (gapforge.operator.gate: names and digests
from the signed, shape-checked bundle.json it returns); with --insecure, what an unproven bundle
says about itself, marked so. Every document is shape-checked where read (gapforge.bundle.documents):
a wrong type is one paragraph naming the file and field, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from gapforge.bundle import INDEX, PRETEST, PROVENANCE, SBOM, SIGNATURE, SUMS
from gapforge.bundle.documents import (
    BUNDLE_INDEX,
    PRETEST_EVIDENCE,
    PROVENANCE_STATEMENT,
    SBOM_FIELDS,
    Schema,
    SignedFiles,
    parse_document,
    shape_problems,
)
from gapforge.bundle.dsse import envelope_payload_unverified
from gapforge.bundle.provenance import subject_digest
from gapforge.bundle.runbook import human_size
from gapforge.bundle.sbom import feature_wheels, summary
from gapforge.errors import BundleError

RECIPE_FIELDS: Schema = {
    "train?": {"method?": str},
    "data?": {"format?": str},
    "quantize?": [str],
    "evaluate?": {"gates?": dict},
}
"""The fields of recipe/recipe.json that inspect shows."""


def _read(files: SignedFiles, name: str, schema: Schema) -> dict[str, Any]:
    """`name`, shape-checked ({} when absent); BundleError naming the file and field otherwise."""
    bundle = files.bundle
    try:
        value, problems = parse_document(files.read(name), schema)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        value, problems = None, [f"unreadable ({exc})"]
    if problems or value is None:
        raise BundleError(
            f"{bundle / name}: {'; '.join(problems)}: the bundle is malformed; run 'gapforge "
            f"verify {bundle}' and get an intact copy from the release manager"
        )
    return value


def _provenance(files: SignedFiles) -> dict[str, Any]:
    """What provenance.json's statement says, read from its DSSE envelope WITHOUT checking the
    signature (display only: `verify` checks it)."""
    try:
        data = files.read(PROVENANCE)
    except OSError:
        return {}
    statement = envelope_payload_unverified(data)
    if not statement or shape_problems(statement, PROVENANCE_STATEMENT):
        return {}
    predicate = statement.get("predicate", {})
    definition = predicate.get("buildDefinition", {})
    run = predicate.get("runDetails", {})
    return {
        "predicate_type": statement.get("predicateType"),
        "subject": subject_digest(statement),
        "build_type": definition.get("buildType"),
        "recipe": definition.get("externalParameters", {}).get("recipe", {}).get("path"),
        "builder": run.get("builder", {}).get("id"),
        "dependencies": len(definition.get("resolvedDependencies", [])),
    }


def describe_bundle(
    bundle: Path, index: dict[str, Any] | None = None, pinned: str | None = None
) -> dict[str, Any]:
    """The facts `inspect` shows, as one JSON-able dict; `index`: the gate's verified bundle.json
    (read and shape-checked here when None); `pinned`: the sha256 of the SHA256SUMS the gate
    proved, so every document shown is the verified bytes (gapforge.bundle.documents.SignedFiles)."""
    files = SignedFiles(bundle, pinned)
    if index is None:
        if not (bundle / INDEX).is_file():
            raise BundleError(
                f"{bundle}: not a bundle (no {INDEX}): pass a folder that 'gapforge build' wrote in dist/"
            )
        index = _read(files, INDEX, BUNDLE_INDEX)
    evidence = _read(files, PRETEST, PRETEST_EVIDENCE)
    recipe = _read(files, "recipe/recipe.json", RECIPE_FIELDS)
    return {
        "bundle": str(bundle),
        "name": index.get("name"),
        "version": index.get("version"),
        "description": index.get("description"),
        "created": index.get("created"),
        "image": index.get("image", {}),
        "model": index.get("model", {}),
        "models": index.get("models", {}),
        "recipe": {
            "method": recipe.get("train", {}).get("method"),
            "data_format": recipe.get("data", {}).get("format"),
            "quantize": recipe.get("quantize", []),
            "gates": recipe.get("evaluate", {}).get("gates", {}),
        },
        "packages": summary(sbom := _read(files, SBOM, SBOM_FIELDS)),
        "features": feature_wheels(sbom),
        "locks": index.get("locks", {}),
        "pretest": {
            "verdict": evidence.get("verdict"),
            "passed": evidence.get("passed"),
            "seconds": evidence.get("seconds"),
            "steps": evidence.get("steps", {}),
            "gates": evidence.get("gates", []),
            "deltas_vs_merged_pct": evidence.get("deltas_vs_merged_pct", {}),
        },
        "provenance": _provenance(files),
        "signed": (bundle / SIGNATURE).is_file() and (bundle / SUMS).is_file(),
        "signing_key": index.get("signing_key", {}),
        "builder": index.get("builder", {}),
    }


def bundle_table(facts: dict[str, Any]) -> Table:
    table = Table(
        title=f"{facts['name']} {facts['version']}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    image, model, recipe, pretest = (
        facts["image"],
        facts["model"],
        facts["recipe"],
        facts["pretest"],
    )
    packages = facts["packages"]
    provenance = facts.get("provenance", {})
    rows = [
        ("description", facts.get("description") or ""),
        ("image", image.get("ref", "")),
        ("image digest", image.get("manifest_digest", "")),
        ("image ID", image.get("config_digest", "")),
        (
            "archive",
            f"{image.get('file')} {human_size(int(image.get('size', 0)))} sha256:{image.get('sha256', '')}",
        ),
        ("profile", image.get("profile", "")),
        (
            "layers",
            ", ".join(
                f"{x['name']} ({human_size(x.get('size', 0))})" for x in image.get("layers", [])
            ),
        ),
        (
            "model",
            f"{model.get('id')} ({model.get('source', {}).get('type')}, {model.get('revision')})",
        ),
        *(
            (
                f"models: {name}",
                f"{m.get('id')} ({m.get('source', {}).get('type')}, {m.get('revision')})",
            )
            for name, m in sorted(facts.get("models", {}).items())
        ),
        (
            "recipe",
            f"{recipe['method']} on {recipe['data_format']} data → {', '.join(recipe['quantize'])}",
        ),
        ("packages", ", ".join(f"{v} {k}" for k, v in sorted(packages.items()))),
        (
            "features",
            f"{','.join(facts['features']['sets']) or '(not recorded)'}; wheels: "
            + ", ".join(f"{g} {len(w)}" for g, w in facts["features"]["wheels"].items()),
        ),
        ("locks", "\n".join(f"{k} {v[:16]}…" for k, v in sorted(facts["locks"].items()))),
        ("pretest", f"{pretest['verdict']} in {pretest['seconds']} s (network cut, sample data)"),
        *(
            (
                f"  gate {g['name']}",
                f"{'pass' if g.get('passed') else 'FAIL'}: {g.get('detail', '')}",
            )
            for g in pretest["gates"]
        ),
        (
            "provenance",
            f"{provenance.get('predicate_type')} for {provenance.get('subject')}, "
            f"{provenance.get('dependencies')} dependencies (DSSE-signed; 'verify' checks it)"
            if provenance
            else "none",
        ),
        (
            "signed",
            f"{'yes' if facts['signed'] else 'NO'}, key {facts['signing_key'].get('fingerprint', '?')}",
        ),
        (
            "built",
            f"{facts.get('created')} by gapforge {facts['builder'].get('version')}"
            f"{' at ' + facts['builder']['commit'][:12] if facts['builder'].get('commit') else ''}",
        ),
    ]
    for key, value in rows:
        table.add_row(escape(key), escape(str(value)))
    return table
