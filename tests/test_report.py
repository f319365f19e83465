"""ralph report: one self-contained HTML page whose charts hold the numbers of ralph stats."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import Project
from test_stats import EVENTS, ev

from ralph.observe.report import write_report
from ralph.observe.stats import compute_stats


class Page(HTMLParser):
    """The marks of a report page: chart shapes by chart, loaded resources, embedded data."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.shapes: dict[str, list[dict[str, str]]] = {}
        self.loads: list[str] = []
        self.data: str | None = None
        self._chart: str | None = None
        self._in_data = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        if tag == "svg":
            self._chart = found["data-chart"]
            self.shapes[self._chart] = []
        elif tag in ("rect", "circle") and self._chart:
            self.shapes[self._chart].append({"tag": tag, **found})
        self.loads += [found[key] for key in ("src", "href") if key in found]
        self._in_data = tag == "script" and found.get("id") == "ralph-data"

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data = (self.data or "") + data


def bars(page: Page, chart: str) -> list[tuple[str, str]]:
    return [
        (shape["data-label"], shape["data-value"])
        for shape in page.shapes[chart]
        if shape["tag"] == "rect" and "bar" in shape["class"].split()
    ]


@pytest.fixture
def page(tmp_path: Path) -> tuple[Path, str]:
    """The report of the constructed event log from test_stats, written to tmp_path."""
    path = write_report(compute_stats(EVENTS), tmp_path / "out" / "report.html")
    return path, path.read_text(encoding="utf-8")


def test_report_is_one_page_that_loads_nothing(page: tuple[Path, str]) -> None:
    """The page exists and names no network address: no script or style sheet to fetch."""
    path, html = page
    assert path.is_file() and html.startswith("<!doctype html>")
    assert "http://" not in html and "https://" not in html
    assert Page(html).loads == []
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|@import|url\(", html)


def test_embedded_data_is_the_stats_document(page: tuple[Path, str]) -> None:
    """The JSON block in the page is exactly what `ralph stats --json` prints."""
    data = Page(page[1]).data
    assert data is not None
    assert json.loads(data) == json.loads(json.dumps(compute_stats(EVENTS).as_dict()))


@pytest.mark.parametrize(
    ("chart", "expected"),
    [
        (
            "done-per-day",
            [("2024-05-01", "1"), ("2024-05-02", "1"), ("2024-05-03", "0"), ("2024-05-04", "1")],
        ),
        ("attempts", [("1", "1"), ("2", "3")]),
        (
            "failure-classes",
            [("check_failed", "2"), ("crash", "1"), ("no_changes", "1"), ("usage_limit", "1")],
        ),
        ("failed-checks", [("pytest -q", "1"), ("ruff check .", "1")]),
    ],
)
def test_bar_charts_hold_the_numbers(
    page: tuple[Path, str], chart: str, expected: list[tuple[str, str]]
) -> None:
    """Each bar chart has one bar per day, attempt count, failure class or check, with its value."""
    assert bars(Page(page[1]), chart) == expected


def test_done_per_day_has_one_bar_per_day(page: tuple[Path, str]) -> None:
    """The tasks-done chart draws as many bars as the data has days, quiet days included."""
    parsed = Page(page[1])
    assert parsed.data is not None
    assert len(bars(parsed, "done-per-day")) == len(json.loads(parsed.data)["days"]) == 4


def test_first_attempt_line_skips_days_without_a_finish(page: tuple[Path, str]) -> None:
    """The first-attempt rate line has a point per day with finished tasks, at its rate."""
    points = [
        (shape["data-label"], shape["data-value"])
        for shape in Page(page[1]).shapes["first-attempt-rate"]
        if shape["tag"] == "circle"
    ]
    assert points == [("2024-05-01", "1"), ("2024-05-02", "0"), ("2024-05-04", "1")]


def test_hostile_names_stay_text(tmp_path: Path) -> None:
    """A task id or check command full of markup can't add a script or break the data block."""
    evil = '</script><script src="//x.invalid/a.js"></script><img src=x onerror=alert(1)>'
    events = [
        ev("2024-05-01T09:00", "attempt_started", task=evil, attempt=1),
        ev(
            "2024-05-01T09:01",
            "check_finished",
            task=evil,
            attempt=1,
            command=evil,
            outcome="exited",
            passed=False,
            duration_s=1.0,
        ),
        ev("2024-05-01T09:02", "rolled_back", task=evil, attempt=1, reason=evil),
        ev("2024-05-01T09:03", "task_failed", task=evil, attempts=1),
    ]
    stats = compute_stats(events)
    html = write_report(stats, tmp_path / "r.html", datetime(2024, 5, 2, tzinfo=UTC)).read_text()
    parsed = Page(html)
    assert parsed.loads == [] and "<script src" not in html and "<img" not in html
    assert parsed.data is not None and json.loads(parsed.data) == stats.as_dict()
    assert bars(parsed, "failed-checks") == [(evil, "1")]


def test_empty_log_still_makes_a_page(tmp_path: Path) -> None:
    """With no events the page says there is nothing to show instead of drawing empty charts."""
    html = write_report(compute_stats([]), tmp_path / "r.html").read_text()
    assert Page(html).shapes == {} and "Nothing to show" in html


@pytest.mark.parametrize("output", [None, "elsewhere/page.html"])
def test_cli_report_writes_and_prints_the_path(project: Project, output: str | None) -> None:
    """`ralph report` writes the page (.ralph/report.html unless --output) and prints its path."""
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hello\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    target = project.root.parent / output if output else project.root / ".ralph" / "report.html"
    args = ["--output", str(target)] if output else []
    result = project.ralph("report", *args, check_code=0)
    assert result.stdout.strip() == str(target)
    done_on = next(e["ts"][:10] for e in project.events() if e["event"] == "task_done")
    assert bars(Page(target.read_text(encoding="utf-8")), "done-per-day") == [(done_on, "1")]
