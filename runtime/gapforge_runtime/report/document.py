"""One model of the report's content, rendered twice: report.md and a self-contained report.html.

Sections are built once as blocks (text, bullets, tables, figures, answers); the two renderers
walk the same blocks, so the two files cannot say different things. Inline `code` spans are the
only markup inside a text: Markdown keeps them, HTML turns them into <code>.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Text:
    """A paragraph."""

    text: str


@dataclass(frozen=True)
class Bullets:
    """A list whose items each open with a bold lead ("Did the fine-tune help?")."""

    items: list[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    """A table of strings (every cell already formatted: the renderers print no number)."""

    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A chart written beside the report: linked from report.md, inlined in report.html."""

    alt: str
    file: Path


@dataclass(frozen=True)
class Answer:
    """One labelled text shown whole (a prompt, its reference or a model's answer)."""

    label: str
    text: str


@dataclass(frozen=True)
class Subheading:
    """A heading inside a section (one per prompt of the sample answers)."""

    text: str


Block = Text | Bullets | Table | Figure | Answer | Subheading


@dataclass
class Section:
    """A titled part of the report."""

    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    """The whole report: the verdict and its answers first, then the detail sections."""

    title: str
    verdict: str
    passed: bool | None
    sections: list[Section]


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Bullets):
        return [f"- **{lead}** {text}" for lead, text in block.items]
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in block.headers) + " |"]
        lines.append("|" + " --- |" * len(block.headers))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return lines
    if isinstance(block, Figure):
        return [f"![{block.alt}](plots/{block.file.name})"]
    if isinstance(block, Subheading):
        return [f"### {block.text}"]
    quoted = [f"> {line}" if line else ">" for line in (block.text or "(empty)").splitlines()]
    return [f"**{block.label}:**", "", *quoted]


def render_markdown(doc: Document) -> str:
    """report.md: GitHub-flavoured Markdown, charts linked from plots/."""
    lines = [f"# {doc.title}", "", f"Verdict: **{doc.verdict}**", ""]
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += [*_md_block(block), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def inline_html(text: str) -> str:
    """Escape a text; its `code` spans become <code> elements."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick is a character, not markup
        return html.escape(text)
    return "".join(
        f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts)
    )


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{inline_html(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(
            f"<li><strong>{html.escape(lead)}</strong> {inline_html(text)}</li>"
            for lead, text in block.items
        )
        return f'<ul class="verdict">{items}</ul>'
    if isinstance(block, Table):
        head = "".join(f"<th>{inline_html(h)}</th>" for h in block.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>"
            for row in block.rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(block, Figure):
        encoded = base64.b64encode(block.file.read_bytes()).decode()
        return f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{encoded}">'
    if isinstance(block, Subheading):
        return f"<h3>{html.escape(block.text)}</h3>"
    return (
        f"<p><strong>{html.escape(block.label)}:</strong></p>"
        f"<blockquote>{inline_html(block.text or '(empty)')}</blockquote>"
    )


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left}}
.pass{{color:#060}}.fail{{color:#a00;font-weight:bold}}ul.verdict li{{margin:.4em 0}}
blockquote{{white-space:pre-wrap;background:#f4f4f4;margin:0 0 .8em;padding:.5em}}
img{{max-width:100%}}</style>
</head><body>
<h1>{title}</h1>
<p>Verdict: <strong class="{verdict_class}">{verdict}</strong></p>
{body}
</body></html>
"""


def render_html(doc: Document) -> str:
    """report.html: one file, its charts inlined as data: URIs and its style inline."""
    body = "\n".join(
        f"<h2>{html.escape(s.title)}</h2>\n" + "\n".join(_html_block(b) for b in s.blocks)
        for s in doc.sections
    )
    return HTML_PAGE.format(
        title=html.escape(doc.title),
        verdict=html.escape(doc.verdict),
        verdict_class="pass" if doc.passed else "fail",
        body=body,
    )
