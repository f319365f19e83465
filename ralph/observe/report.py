"""``ralph report``: the numbers of ``ralph stats`` as one self-contained HTML page.

The charts are SVG drawn here, the style sheet is inline and nothing is loaded from
anywhere, so the page opens offline and can be mailed or archived as it is. The numbers
behind the charts are embedded as JSON (``<script type="application/json"
id="ralph-data">``) for whoever wants to read them back.

The page stays small whatever the log holds: the charts by day show the last
``MAX_CHART_DAYS`` days, a bar chart at most ``MAX_BARS`` bars, the task table at most
``MAX_TABLE_ROWS`` rows (the embedded JSON has every number).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from ralph.observe.stats import TASK_COLUMNS, Stats, summary_rows, task_rows
from ralph.runtime.atomic import write_atomic

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 16, 44
MAX_CHART_DAYS = 366
MAX_BARS = 50
MAX_TABLE_ROWS = 1000

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 2rem auto;
       max-width: 1360px; padding: 0 1rem; }
h1 { margin-bottom: 0; }
.meta { color: #5b6475; margin-top: .25rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr));
          gap: 1.5rem; }
figure { margin: 0; border: 1px solid #dde1e8; border-radius: 6px; padding: .75rem; }
figcaption { font-weight: 600; margin-bottom: .5rem; }
svg { width: 100%; height: auto; }
svg text { font-size: 11px; fill: #5b6475; }
.bar { fill: #4a7bd0; }
.bar.failure { fill: #d0614a; }
.grid { stroke: #e6e9ef; }
.axis { stroke: #9aa3b2; }
.line { fill: none; stroke: #2f9e6e; stroke-width: 2; }
.point { fill: #2f9e6e; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; }
th, td { text-align: left; padding: .25rem .75rem; border-bottom: 1px solid #e6e9ef;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: #5b6475; font-style: italic; }
"""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float


def write_report(stats: Stats, path: Path, generated: datetime | None = None) -> Path:
    """Write the page for ``stats`` to ``path`` (replacing it whole); return the path."""
    write_atomic(path, render(stats, generated or datetime.now(UTC)))
    return path


def render(stats: Stats, generated: datetime) -> str:
    """The whole HTML page."""
    window = f" since {stats.since}" if stats.since else ""
    days = stats.days[-MAX_CHART_DAYS:]
    histogram = list(stats.attempts_histogram.items())[:MAX_BARS]
    charts = [
        ("Tasks done per day", bar_chart("done-per-day", [Bar(d.day, d.done) for d in days])),
        (
            "Attempts per finished task",
            bar_chart("attempts", [Bar(f"{n}", t) for n, t in histogram], x_title="attempts"),
        ),
        (
            "First-attempt success rate by day",
            line_chart("first-attempt-rate", [(d.day, d.first_attempt_rate) for d in days]),
        ),
        (
            "Failed attempts by class",
            bar_chart("failure-classes", _bars(stats.failures_by_class), css="bar failure"),
        ),
        (
            "Failed checks by command",
            bar_chart("failed-checks", _bars(stats.failures_by_check), css="bar failure"),
        ),
    ]
    figures = "\n".join(
        f"<figure><figcaption>{escape(title)}</figcaption>{chart}</figure>"
        for title, chart in charts
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ralph report</title>
<style>{STYLE}</style>
</head>
<body>
<h1>ralph report</h1>
<p class="meta">Generated {escape(generated.isoformat(timespec="seconds"))}{escape(window)}.</p>
<h2>Overall</h2>
{_table([list(row) for row in summary_rows(stats)])}
<h2>Charts</h2>
<section class="charts">
{figures}
</section>
<h2>Tasks</h2>
{_tasks_table(stats)}
<script type="application/json" id="ralph-data">{_embedded_json(stats)}</script>
</body>
</html>
"""


def _bars(counts: dict[str, int]) -> list[Bar]:
    """The most frequent first (as the stats rank them), at most ``MAX_BARS``."""
    return [Bar(label, value) for label, value in list(counts.items())[:MAX_BARS]]


def _embedded_json(stats: Stats) -> str:
    # Escaped so no value can close the script element or start markup inside it.
    text = json.dumps(stats.as_dict(), ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _table(rows: list[list[str]], header: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header or [])
    body = "".join(
        "<tr>" + "".join(_cell(index, cell) for index, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _cell(index: int, text: str) -> str:
    if index == 0:
        return f"<th>{escape(text)}</th>"
    numeric = text.replace(".", "", 1).replace("%", "").isdigit()
    return f'<td class="num">{escape(text)}</td>' if numeric else f"<td>{escape(text)}</td>"


def _tasks_table(stats: Stats) -> str:
    if not stats.tasks:
        return '<p class="empty">No task in this window.</p>'
    rows = task_rows(stats)
    table = _table(rows[:MAX_TABLE_ROWS], list(TASK_COLUMNS))
    if len(rows) > MAX_TABLE_ROWS:
        left = len(rows) - MAX_TABLE_ROWS
        table += f'<p class="empty">{left} more tasks: see <code>ralph stats --json</code>.</p>'
    return table


def _scale(values: Sequence[float]) -> float:
    """A round top for the y axis, at least 1."""
    top = max([1.0, *(value for value in values if math.isfinite(value))])
    magnitude = 10 ** math.floor(math.log10(top))
    return float(math.ceil(top / magnitude) * magnitude)


def _frame(chart: str, top: float, fmt: Callable[[float], str], content: str) -> str:
    """An SVG with horizontal grid lines at 0, half and the top, and ``content`` in it."""
    plot_bottom = HEIGHT - BOTTOM
    lines = []
    for fraction in (0.0, 0.5, 1.0):
        y = plot_bottom - fraction * (plot_bottom - TOP)
        css = "axis" if fraction == 0 else "grid"
        lines.append(
            f'<line class="{css}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(top * fraction)}</text>'
        )
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" data-chart="{chart}">'
        + "".join(lines)
        + content
        + "</svg>"
    )


def _x_labels(labels: Sequence[str], centres: Sequence[float]) -> str:
    """Labels under the x axis; with many, every n-th one so they don't overlap."""
    step = max(1, math.ceil(len(labels) / 12))
    y = HEIGHT - BOTTOM + 16
    return "".join(
        f'<text x="{x:.1f}" y="{y}" text-anchor="middle">{escape(_short(label))}</text>'
        for index, (label, x) in enumerate(zip(labels, centres, strict=True))
        if index % step == 0
    )


def _short(label: str, width: int = 16) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _count(value: float) -> str:
    return f"{value:g}"


def bar_chart(chart: str, bars: list[Bar], *, css: str = "bar", x_title: str = "") -> str:
    """An SVG bar chart; each bar is a ``rect`` with ``data-label`` and ``data-value``."""
    if not bars:
        return f'<p class="empty" data-chart="{chart}">Nothing to show in this window.</p>'
    top = _scale([bar.value for bar in bars])
    top += top % 2  # an even top puts the middle grid line on a whole count
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / len(bars)
    rects, centres = [], []
    for index, bar in enumerate(bars):
        height = plot_height * bar.value / top
        x = LEFT + index * slot + slot * 0.15
        centres.append(LEFT + (index + 0.5) * slot)
        rects.append(
            f'<rect class="{css}" x="{x:.1f}" y="{HEIGHT - BOTTOM - height:.1f}" '
            f'width="{slot * 0.7:.1f}" height="{height:.1f}" '
            f'data-label="{escape(bar.label)}" data-value="{bar.value:g}">'
            f"<title>{escape(bar.label)}: {bar.value:g}</title></rect>"
        )
    title = (
        f'<text x="{LEFT + plot_width / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_title)}</text>"
        if x_title
        else ""
    )
    labels = _x_labels([bar.label for bar in bars], centres)
    return _frame(chart, top, _count, "".join(rects) + labels + title)


def line_chart(chart: str, points: list[tuple[str, float | None]]) -> str:
    """An SVG line of rates (0 to 1) by label; a None breaks the line."""
    if not any(value is not None for _label, value in points):
        return f'<p class="empty" data-chart="{chart}">Nothing to show in this window.</p>'
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / len(points)
    centres = [LEFT + (index + 0.5) * slot for index in range(len(points))]
    segments: list[list[str]] = [[]]
    dots = []
    for (label, value), x in zip(points, centres, strict=True):
        if value is None:
            segments.append([])
            continue
        y = HEIGHT - BOTTOM - plot_height * value
        segments[-1].append(f"{x:.1f},{y:.1f}")
        dots.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" '
            f'data-label="{escape(label)}" data-value="{value:g}">'
            f"<title>{escape(label)}: {value:.0%}</title></circle>"
        )
    lines = "".join(
        f'<polyline class="line" points="{" ".join(segment)}"/>'
        for segment in segments
        if len(segment) > 1
    )
    labels = _x_labels([label for label, _value in points], centres)
    return _frame(chart, 1.0, lambda rate: f"{rate:.0%}", lines + "".join(dots) + labels)
