"""The run's report without a model run: a manifest and a training history shaped like the default
recipe's CPU run (golden/report_run.json, checked against the real run's manifest shape), rendered
to report.md (held by a golden file) and report.html, with the charts' labels measured."""

from __future__ import annotations

import copy
import html
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_run import GOLDEN as MANIFEST_SHAPE
from test_run import manifest_shape

from tests.requirements import require_module

GOLDEN = Path(__file__).parent / "golden"
RUN = GOLDEN / "report_run.json"
REPORT_MD = GOLDEN / "report.md"
PIPELINE = ["Base", "Merged", "GGUF F16", "GGUF Q8_0", "GGUF Q4_K_M"]


@pytest.fixture
def run() -> dict[str, Any]:
    """A fresh copy of the recorded run (tests change it)."""
    return dict(json.loads(RUN.read_text(encoding="utf-8")))


def render(out: Path, manifest: dict[str, Any], history: list[dict[str, Any]]) -> tuple[str, str]:
    """write_report into `out`; report.md and report.html as text."""
    require_module("matplotlib")
    from gapforge_runtime.report import write_report

    written = write_report(out, manifest, history)
    return written["report.md"].read_text(), written["report.html"].read_text()


def section(md: str, title: str) -> str:
    """The text of one `## title` section of report.md."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert found, f"no section {title!r}"
    return found.group(1)


def first_column(table_text: str) -> list[str]:
    """The first cell of each body row of the first Markdown table in a text."""
    rows = [line for line in table_text.splitlines() if line.startswith("| ") and "---" not in line]
    return [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]


def test_fixture_is_shaped_like_a_real_run(run: dict[str, Any]) -> None:
    assert manifest_shape(run["manifest"]) == json.loads(MANIFEST_SHAPE.read_text())


def test_report_md_matches_golden(run: dict[str, Any], tmp_path: Path) -> None:
    md, _ = render(tmp_path, run["manifest"], run["history"])
    if os.environ.get(
        "GAPFORGE_WRITE_GOLDEN"
    ):  # regenerate: GAPFORGE_WRITE_GOLDEN=1 pytest -k golden
        REPORT_MD.write_text(md, encoding="utf-8")
    assert md == REPORT_MD.read_text(encoding="utf-8")


def test_first_screen_answers_the_three_questions(run: dict[str, Any], tmp_path: Path) -> None:
    md, page = render(tmp_path, run["manifest"], run["history"])
    assert md.index("## Verdict") < md.index("## ") + 1, "the verdict is the first section"
    verdict = section(md, "Verdict")
    helped, cost, ship = (line for line in verdict.splitlines() if line.startswith("- "))
    assert helped.startswith("- **Did the fine-tune help?** Yes.")
    assert "test loss 2.3147 → 1.5236" in helped and "token F1 11.8 → 46.3" in helped
    assert "95% CI 0.500 to 0.500, 8 prompts, no difference found" in helped
    assert "GGUF Q4_K_M 105.5 MB (39% of merged), perplexity +9.05%, token F1 -6.6 points" in cost
    assert ship.endswith("**Which to ship?** GGUF Q4_K_M (105.5 MB): the smallest artefact that "
                         "passes every gate that applies to it (`max_perplexity_delta_pct[gguf:q4_k_m]`).")  # fmt: skip
    # In the page too, before any table or chart.
    assert page.index("Which to ship?") < page.index("<table>") < page.index("<img")


def test_rows_follow_the_pipeline_whatever_the_key_order(
    run: dict[str, Any], tmp_path: Path
) -> None:
    evaluation = run["manifest"]["evaluation"]
    for key in ("models", "delta_vs_merged_pct"):
        evaluation[key] = dict(reversed(list(evaluation[key].items())))
    evaluation["task_metrics"]["models"] = dict(
        sorted(evaluation["task_metrics"]["models"].items())
    )
    md, _ = render(tmp_path, run["manifest"], run["history"])
    assert first_column(section(md, "Test split quality")) == PIPELINE
    assert (
        first_column(section(md, "Task metrics (points, against the test split's references)"))
        == PIPELINE
    )
    answers = re.findall(r"^\*\*(.+):\*\*$", section(md, "Sample answers"), re.M)
    assert answers[:7] == ["Prompt", "Reference", *PIPELINE]


def test_a_cpu_run_prints_no_none_and_no_gpu_figure(run: dict[str, Any], tmp_path: Path) -> None:
    md, page = render(tmp_path, run["manifest"], run["history"])
    for text in (md, page):
        assert not re.search(r"\bNone\b|\bnan\b|\bnull\b|0\.0000\b", text)
        for label in ("GPU hours", "TFLOP/s", "FLOP utilization", "peak GPU memory", "resumed"):
            assert label not in text
    manifest = run["manifest"]
    raw_keys = [k for k in (*manifest["data"], *manifest["training"]) if "_" in k]
    assert raw_keys and not [k for k in raw_keys if k in md], "every key is given a label"


def test_a_gpu_run_shows_its_gpu_figures(run: dict[str, Any], tmp_path: Path) -> None:
    training = run["manifest"]["training"]
    training.update(device="cuda", peak_gpu_memory_bytes=3 * 2**30, model_tflops_per_second=41.5,
                    mfu_pct=4.2, gpu_hours=0.034)  # fmt: skip
    md, _ = render(tmp_path, run["manifest"], run["history"])
    rows = section(md, "Training")
    for row in ("| peak GPU memory | 3.00 GiB |", "| model TFLOP/s | 41.50 |",
                "| model FLOP utilization | 4.2% |", "| GPU hours | 0.034 |"):  # fmt: skip
        assert row in rows


class PageText(HTMLParser):
    """The text a reader sees in report.html's body (an image counts as its alt text); block
    elements separate words, inline ones (<code>, <strong>) do not."""

    INLINE = ("code", "strong")

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.skip += tag in ("title", "style")
        self.text.append("" if tag in self.INLINE else " ")
        if tag == "img":
            self.text.append(dict(attrs).get("alt") or "")

    def handle_endtag(self, tag: str) -> None:
        self.skip -= tag in ("title", "style")
        self.text.append("" if tag in self.INLINE else " ")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.text.append(data)

    @property
    def words(self) -> list[str]:
        return "".join(self.text).split()


def markdown_words(md: str) -> list[str]:
    """The words of report.md without its markup (headings, bold, quotes, tables, links)."""
    words = []
    for line in md.splitlines():
        if re.fullmatch(r"\|( --- \|)+", line):
            continue
        if line.startswith("| "):  # a table row: its pipes are separators, `\|` a character
            line = line.replace("\\|", "\0").replace("|", " ").replace("\0", "|")
        line = re.sub(r"!\[([^]]*)\]\([^)]*\)", r"\1", line)
        line = re.sub(r"^(#+ |> ?|- )", "", line).replace("**", "").replace("`", "")
        words += line.split()
    return words


def test_md_and_html_say_the_same(run: dict[str, Any], tmp_path: Path) -> None:
    md, page = render(tmp_path, run["manifest"], run["history"])
    parser = PageText()
    parser.feed(page)
    assert parser.words == markdown_words(md)
    assert "data:image/png;base64," in page and "jinja" not in page.lower()
    assert html.escape("8 GB of memory | keep Q8_0") in page, "a pipe in an answer survives"


def text_overlaps(fig: Any) -> list[tuple[str, str]]:
    """Pairs of drawn, non-empty texts of a figure whose boxes intersect (Agg renderer)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    # A tick outside its axis' view keeps a label object that is never drawn.
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low <= tick.get_loc() <= high:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    boxes = [
        (t.get_text(), t.get_window_extent(renderer))
        for t in fig.findobj(Text)
        if t.get_visible() and t.get_text().strip() and id(t) not in undrawn
    ]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def test_the_overlap_check_sees_the_scatter_the_issue_names(run: dict[str, Any]) -> None:
    """The former quality-vs-size scatter, drawn the way it was, collides on this run's numbers
    (merged and GGUF F16 are the same size and perplexity): the check can fail."""
    plt = require_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, m in run["manifest"]["evaluation"]["models"].items():
        point = (m["size_bytes"] / 1e6, m["perplexity"])
        ax.scatter(*point)
        ax.annotate(name, point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    fig.tight_layout()
    assert ("gguf:f16", "merged") in text_overlaps(fig)
    plt.close(fig)


COST_CASES: dict[str, tuple[dict[str, tuple[float, float]], list[str]]] = {
    "default recipe (merged and F16 on the same spot)": (
        {},
        ["Merged", "GGUF F16", "GGUF Q8_0", "GGUF Q4_K_M"],
    ),
    "every artefact, one better than merged, one far worse": (
        {"bnb:int8": (0.4, 160e6), "gptq:int4": (55.0, 90e6), "bnb:nf4": (-0.3, 95e6)},
        [
            "Merged",
            "GGUF F16",
            "bitsandbytes int8",
            "GGUF Q8_0",
            "GGUF Q4_K_M",
            "bitsandbytes NF4",
            "GPTQ int4",
        ],
    ),
}


@pytest.mark.parametrize("case", COST_CASES)
def test_chart_labels_never_collide(run: dict[str, Any], case: str) -> None:
    require_module("matplotlib")
    from gapforge_runtime.report.plots import cost_figure, loss_figure, sweep_figure

    evaluation = copy.deepcopy(run["manifest"]["evaluation"])
    added, rows = COST_CASES[case]
    for name, (delta, size) in added.items():
        evaluation["models"][name] = {**evaluation["models"]["merged"], "size_bytes": size}
        evaluation["delta_vs_merged_pct"][name] = delta
    sweep = {"best": {"number": 1}, "trials": [
        {"number": n, "state": "PRUNED" if n == 2 else "COMPLETE", "eval_loss": 1.5 + n / 100,
         "intermediate": {"10": 2.0 + n / 10, "20": 1.5 + n / 100}} for n in range(4)]}  # fmt: skip
    figures = {
        "cost": cost_figure(evaluation["models"], evaluation["delta_vs_merged_pct"]),
        "loss": loss_figure(run["history"]),
        "sweep": sweep_figure(sweep),
    }
    plt = require_module("matplotlib.pyplot")
    for name, fig in figures.items():
        assert fig is not None, name
        if name == "cost":  # one row per artefact, in pipeline order (largest first)
            assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == rows
        assert text_overlaps(fig) == [], f"{name}: labels overlap"
        plt.close(fig)
