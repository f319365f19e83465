"""ralph stats: numbers from the event log with known answers, --since, and git interventions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, git

from ralph.observe.stats import (
    compute_stats,
    manual_commits,
    parse_since,
    read_all_events,
    summary_rows,
    work_branch,
)
from ralph.observe.telemetry import EventLog

Event = dict[str, Any]


def ev(ts: str, event: str, **fields: Any) -> Event:
    """An event as EventLog writes it, at ``ts`` (UTC, to the minute)."""
    return {
        "schema": 1,
        "ts": f"{ts}:00.000+00:00",
        "mono": 0.0,
        "run_id": "r",
        "event": event,
        **fields,
    }


def agent(ts: str, task: str, attempt: int, seconds: float, **usage: Any) -> Event:
    """An agent_exited event; tokens and cost are null unless given."""
    figures = {"input_tokens": None, "output_tokens": None, "cost_usd": None, **usage}
    return ev(ts, "agent_exited", task=task, attempt=attempt, duration_s=seconds, **figures)


def check(ts: str, task: str, attempt: int, command: str, seconds: float, **how: Any) -> Event:
    """A check_finished event; it passed unless ``passed=False`` is given."""
    fields = {"outcome": "exited", "exit_code": 0, "passed": True, **how}
    return (
        ev(ts, "check_finished", task=task, attempt=attempt, command=command, duration_s=seconds)
        | fields
    )


def started(ts: str, task: str, attempt: int) -> Event:
    return ev(ts, "attempt_started", task=task, attempt=attempt, start_commit="c0ffee")


def rolled(ts: str, task: str, attempt: int, reason: str) -> Event:
    return ev(ts, "rolled_back", task=task, attempt=attempt, reason=reason, summary="", diff="")


EVENTS: list[Event] = [
    ev("2024-05-01T09:00", "run_started", once=False, branch="main"),
    # alpha: done at the first attempt on May 1.
    ev("2024-05-01T09:00", "task_started", task="alpha", title="Alpha", attempts_so_far=0),
    started("2024-05-01T09:00", "alpha", 1),
    agent("2024-05-01T09:01", "alpha", 1, 10, input_tokens=100, output_tokens=20, cost_usd=0.1),
    check("2024-05-01T09:02", "alpha", 1, "pytest -q", 2),
    ev("2024-05-01T09:02", "committed", task="alpha", attempt=1, commit="a1", learnings=0),
    ev("2024-05-01T09:02", "task_done", task="alpha", attempts=1, commit="a1"),
    # delta: fails its only attempt on May 1 (a failure the May 4 success replaces).
    started("2024-05-01T15:00", "delta", 1),
    agent("2024-05-01T15:01", "delta", 1, 4),
    rolled("2024-05-01T15:01", "delta", 1, "crash"),
    ev(
        "2024-05-01T15:01",
        "task_failed",
        task="delta",
        attempts=1,
        reason="x",
        failure_class="crash",
    ),
    # beta: a failed check, then a usage limit that re-runs attempt 2, done on May 2.
    started("2024-05-01T20:00", "beta", 1),
    agent("2024-05-01T20:01", "beta", 1, 20),
    check("2024-05-01T20:02", "beta", 1, "pytest -q", 3, passed=False, exit_code=1),
    rolled("2024-05-01T20:02", "beta", 1, "check_failed"),
    started("2024-05-02T08:00", "beta", 2),
    agent("2024-05-02T08:01", "beta", 2, 30, input_tokens=200, output_tokens=50, cost_usd=0.3),
    rolled("2024-05-02T08:01", "beta", 2, "usage_limit"),
    started("2024-05-02T08:30", "beta", 2),
    agent("2024-05-02T08:31", "beta", 2, 5),
    check("2024-05-02T08:32", "beta", 2, "pytest -q", 1),
    ev("2024-05-02T09:00", "task_done", task="beta", attempts=2, commit="b2"),
    # gamma: attempt 1 interrupted (doesn't count) and run again; fails twice on May 2.
    started("2024-05-02T10:00", "gamma", 1),
    agent("2024-05-02T10:01", "gamma", 1, 8),
    check("2024-05-02T10:02", "gamma", 1, "pytest -q", 0.5, passed=False, outcome="stopped"),
    rolled("2024-05-02T10:02", "gamma", 1, "interrupted"),
    ev("2024-05-02T10:30", "run_started", once=False, branch="main"),
    started("2024-05-02T10:30", "gamma", 1),
    agent("2024-05-02T10:31", "gamma", 1, 12),
    rolled("2024-05-02T10:31", "gamma", 1, "no_changes"),
    started("2024-05-02T11:00", "gamma", 2),
    agent("2024-05-02T11:01", "gamma", 2, 6),
    check("2024-05-02T11:02", "gamma", 2, "ruff check .", 1, passed=False, exit_code=1),
    rolled("2024-05-02T11:02", "gamma", 2, "check_failed"),
    ev("2024-05-02T12:00", "task_failed", task="gamma", attempts=2, reason="y", failure_class="x"),
    # delta again: a person retries it on May 3; done at its (new) first attempt on May 4.
    ev("2024-05-03T08:00", "task_retried", task="delta"),
    started("2024-05-04T09:00", "delta", 1),
    agent("2024-05-04T09:01", "delta", 1, 7),
    check("2024-05-04T09:02", "delta", 1, "pytest -q", 2),
    ev("2024-05-04T10:00", "task_done", task="delta", attempts=1, commit="d1"),
    # epsilon: one attempt so far, unfinished.
    started("2024-05-04T11:00", "epsilon", 1),
    agent("2024-05-04T11:01", "epsilon", 1, 3, input_tokens=10, output_tokens=5, cost_usd=0.05),
]


def test_stats_from_a_known_log() -> None:
    """Every overall number matches the hand-counted answer for a constructed event log."""
    stats = compute_stats(EVENTS)
    assert (stats.finished, stats.done, stats.failed, stats.done_first_attempt) == (4, 3, 1, 2)
    assert (stats.success_rate, stats.first_attempt_rate) == (0.75, 0.5)
    assert (stats.attempts, stats.mean_attempts, stats.interrupted) == (8, 1.75, 1)
    assert stats.attempts_histogram == {1: 1, 2: 3}
    assert stats.failures_by_class == {
        "check_failed": 2,
        "crash": 1,
        "no_changes": 1,
        "usage_limit": 1,
    }
    assert stats.failures_by_check == {"pytest -q": 1, "ruff check .": 1}
    assert (stats.agent_seconds, stats.check_seconds) == (105.0, 9.5)
    assert (stats.input_tokens, stats.output_tokens, stats.cost_usd) == (310, 75, 0.45)
    assert (stats.agent_runs, stats.agent_runs_without_cost) == (10, 7)
    assert (stats.retries, stats.manual_commits, stats.manual_interventions) == (1, None, None)


@pytest.mark.parametrize(
    ("task", "outcome", "attempts", "first_attempt", "finished_on", "failures"),
    [
        ("alpha", "done", 1, True, "2024-05-01", {}),
        ("beta", "done", 2, False, "2024-05-02", {"check_failed": 1, "usage_limit": 1}),
        ("gamma", "failed", 2, False, "2024-05-02", {"check_failed": 1, "no_changes": 1}),
        ("delta", "done", 2, True, "2024-05-04", {"crash": 1}),
        ("epsilon", None, 1, False, None, {}),
    ],
)
def test_per_task_numbers(
    task: str,
    outcome: str | None,
    attempts: int,
    first_attempt: bool,
    finished_on: str | None,
    failures: dict[str, int],
) -> None:
    """Each task gets its outcome, loop count, first-attempt flag, finishing day and failures."""
    found = {t.task: t for t in compute_stats(EVENTS).tasks}[task]
    assert (found.outcome, found.attempts, found.first_attempt) == (
        outcome,
        attempts,
        first_attempt,
    )
    assert (found.finished_on, found.failures_by_class) == (finished_on, failures)


def test_tokens_and_cost_stay_null_when_no_agent_reported_them() -> None:
    """A task whose agent runs all reported null tokens and cost has null totals, not zero."""
    gamma = {t.task: t for t in compute_stats(EVENTS).tasks}["gamma"]
    assert (gamma.input_tokens, gamma.output_tokens, gamma.cost_usd) == (None, None, None)
    assert (gamma.agent_seconds, gamma.check_seconds, gamma.interrupted) == (26.0, 1.5, 1)


def test_trend_by_day_covers_quiet_days() -> None:
    """The first-attempt trend has one entry per UTC day from the first finish to the last."""
    days = [
        (d.day, d.finished, d.done, d.done_first_attempt, d.first_attempt_rate)
        for d in compute_stats(EVENTS).days
    ]
    assert days == [
        ("2024-05-01", 1, 1, 1, 1.0),
        ("2024-05-02", 2, 1, 0, 0.0),
        ("2024-05-03", 0, 0, 0, None),
        ("2024-05-04", 1, 1, 1, 1.0),
    ]


@pytest.mark.parametrize(
    ("since", "tasks", "finished", "attempts", "retries", "days"),
    [
        (None, 5, 4, 8, 1, 4),
        ("2024-05-02", 4, 3, 5, 1, 3),
        ("2024-05-02T10:00:00Z", 3, 2, 4, 1, 3),
        ("2024-05-03T09:00:00+01:00", 2, 1, 2, 1, 1),
        ("2024-05-04T09:30", 2, 1, 1, 0, 1),
        ("2030-01-01", 0, 0, 0, 0, 0),
    ],
)
def test_since_keeps_only_later_events(
    since: str | None, tasks: int, finished: int, attempts: int, retries: int, days: int
) -> None:
    """--since drops every event before that day or time (UTC when no zone is given)."""
    stats = compute_stats(EVENTS, parse_since(since) if since else None)
    assert (len(stats.tasks), stats.finished, stats.attempts) == (tasks, finished, attempts)
    assert (stats.retries, len(stats.days)) == (retries, days)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-02", datetime(2024, 5, 2, tzinfo=UTC)),
        ("2024-05-02T10:00", datetime(2024, 5, 2, 10, tzinfo=UTC)),
        ("2024-05-02T12:00:00+02:00", datetime(2024, 5, 2, 10, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    """A day means its midnight UTC; a time without a zone is UTC; a zone is honoured."""
    assert parse_since(text) == expected


def test_json_document_is_what_the_cli_prints() -> None:
    """as_dict() is plain JSON with the overall numbers, the days and the tasks."""
    document = json.loads(json.dumps(compute_stats(EVENTS).as_dict()))
    assert document["overall"]["attempts_histogram"] == {"1": 1, "2": 3}
    assert [task["task"] for task in document["tasks"]][:2] == ["alpha", "beta"]
    assert document["days"][2] == {
        "day": "2024-05-03",
        "finished": 0,
        "done": 0,
        "done_first_attempt": 0,
        "first_attempt_rate": None,
    }


def test_read_all_events_reads_rotated_files_first(tmp_path: Path) -> None:
    """Rotated events-<stamp>.jsonl files are read in name order, then events.jsonl."""
    log = EventLog(tmp_path / "events.jsonl", "run-1", max_bytes=400)
    for number in range(40):
        log.emit("tick", number=number)
    assert len(list(tmp_path.glob("events-*.jsonl"))) > 2
    assert [event["number"] for event in read_all_events(tmp_path)] == list(range(40))


def test_work_branch_is_the_last_run_started_branch() -> None:
    """The work branch is the branch of the newest run_started event."""
    assert work_branch(EVENTS) == "main"
    assert work_branch([*EVENTS, ev("2024-05-05T00:00", "run_started", branch="b")]) == "b"
    assert work_branch([]) is None


def _commit(root: Path, subject: str, *trailers: str) -> None:
    git(
        root,
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        subject,
        *[arg for t in trailers for arg in ("-m", t)],
    )


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A repository on main: two human commits, then ralph's commits with three human ones
    among and after them; a side branch adds one more human commit."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "test@example.invalid")
    _commit(root, "initial")
    _commit(root, "set up ralph")
    _commit(root, "Add a greeting", "Ralph-Task: greet\nRalph-Attempt: 1")
    _commit(root, "fix the greeting by hand")
    _commit(root, "Learnings from attempt 1 of sum", "Ralph-Learnings: sum")
    _commit(root, "human: tweak docs")
    _commit(root, "Add sum", "Ralph-Task: sum\nRalph-Attempt: 2\nRalph-Agent: scripted")
    _commit(root, "human: release notes mention Ralph-Task: nothing")
    git(root, "checkout", "-q", "-b", "side")
    _commit(root, "side work")
    return root


@pytest.mark.parametrize(("branch", "expected"), [("main", 3), (None, 4), ("gone", 4)])
def test_manual_commits_counts_human_commits_after_ralphs_first(
    history: Path, branch: str | None, expected: int
) -> None:
    """Commits without a Ralph trailer after ralph's first commit count, on the work branch
    (HEAD when the branch is unknown)."""
    assert manual_commits(history, branch) == expected


def test_manual_commits_is_zero_before_ralph_ever_committed(tmp_path: Path) -> None:
    """A history without any ralph commit has no manual interventions."""
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.name", "Test User")
    git(tmp_path, "config", "user.email", "test@example.invalid")
    assert manual_commits(tmp_path) == 0
    _commit(tmp_path, "initial")
    _commit(tmp_path, "more")
    assert manual_commits(tmp_path) == 0


def test_manual_commits_since_counts_only_later_commits(history: Path) -> None:
    """With a start time, only human commits committed at or after it count."""
    assert manual_commits(history, "main", parse_since("2999-01-01")) == 0
    assert manual_commits(history, "main", parse_since("2000-01-01")) == 3


def test_cli_stats_json_after_a_real_run(project: Project) -> None:
    """`ralph stats --json` after a real run counts its tasks, attempts, failures and commits."""
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hello\n"}]})
    project.spec("broken", max_attempts=2)
    project.attempts("broken", {"steps": [{"write": "b.txt", "content": "x\n"}], "exit": 1})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    project.write("notes.txt", "a person was here\n")
    project.commit("human: notes")
    document = json.loads(project.ralph("stats", "--json", check_code=0).stdout)
    overall = document["overall"]
    assert (overall["finished"], overall["done"], overall["failed"]) == (2, 1, 1)
    assert (overall["first_attempt_rate"], overall["attempts"]) == (0.5, 3)
    assert overall["failures_by_class"] == {"crash": 2}
    assert (overall["manual_commits"], overall["manual_interventions"]) == (1, 1)
    assert overall["agent_seconds"] > 0 and overall["check_seconds"] > 0
    tasks = {task["task"]: task for task in document["tasks"]}
    assert (tasks["greet"]["attempts"], tasks["broken"]["attempts"]) == (1, 2)
    assert [day["finished"] for day in document["days"]] == [2]


@pytest.mark.parametrize(("since", "code"), [("yesterday", 2), ("2999-01-01", 0)])
def test_cli_since_is_validated(project: Project, since: str, code: int) -> None:
    """A --since that is no day or ISO time is a usage error (exit 2); a valid one works."""
    result = project.ralph("stats", "--since", since, check_code=code)
    if code:
        assert "--since" in result.stderr
    else:
        assert "tasks finished" in result.stdout


def test_time_the_merge_queue_and_the_limits_cost() -> None:
    """Re-checks, the agent and check time of attempts that ended in a conflict, and the
    waits for limits, each summed on their own."""
    events = [
        started("2024-05-01T09:00", "a", 1),
        agent("2024-05-01T09:01", "a", 1, 40),
        check("2024-05-01T09:02", "a", 1, "pytest -q", 5),
        rolled("2024-05-01T09:03", "a", 1, "conflict"),
        started("2024-05-01T09:04", "a", 1),  # the same attempt again, from the new tip
        agent("2024-05-01T09:05", "a", 1, 30),
        check("2024-05-01T09:06", "a", 1, "pytest -q", 4),
        ev("2024-05-01T09:07", "recheck_started", task="a", worker=0, tip="t"),
        ev("2024-05-01T09:07", "rechecked", task="a", worker=0, passed=True, duration_s=4.5),
        ev("2024-05-01T09:08", "task_done", task="a", attempts=1, commit="c"),
        ev("2024-05-01T09:09", "waiting", reason="usage_limit", seconds=120, until="x", worker=0),
        ev("2024-05-01T09:20", "waiting", reason="api_outage", seconds=30, until="x", worker=1),
    ]
    stats = compute_stats(events)
    assert (stats.rechecks, stats.recheck_seconds) == (1, 4.5)
    assert stats.conflict_seconds == 45.0
    assert stats.waited_seconds == 150.0
    assert stats.attempts == 1 and stats.failures_by_class == {"conflict": 1}
    rows = dict(summary_rows(stats))
    assert rows["re-checks in the merge queue"].startswith("1 (")
