"""What the event log says about the work: attempts per task, success rates, failures,
time in the agent and in checks, tokens and cost, and the trend by day.

Everything here is a pure function of a list of events as ``read_events`` returns them,
except ``read_all_events`` (reads ``.ralph/``) and ``manual_commits`` (reads git).
The definitions are spelled out in docs/telemetry.md.

The log is in ``.ralph/``, where an agent can write, so every event is input: a time is
read within a sane range (from 2020 to a day from now), durations, tokens, costs and
attempt numbers as finite numbers within bounds, names cut to a readable length, and what
can't be read is skipped. Numbers and work stay bounded whatever the log holds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ralph.observe.telemetry import read_events
from ralph.vcs import repo

Event = dict[str, Any]


def read_all_events(ralph_dir: Path) -> list[Event]:
    """Every event in ``ralph_dir``: the rotated ``events*.jsonl`` in name order, then
    ``events.jsonl``, which is always the newest."""
    current = ralph_dir / "events.jsonl"
    rotated = sorted(path for path in ralph_dir.glob("events*.jsonl") if path != current)
    events: list[Event] = []
    for path in [*rotated, current]:
        events += read_events(path)
    return events


def parse_since(text: str) -> datetime:
    """A ``--since`` value: a day (YYYY-MM-DD, from midnight UTC) or an ISO-8601 time.

    A time without a zone is read as UTC. Raises ValueError for anything else.
    """
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


EARLIEST = datetime(2020, 1, 1, tzinfo=UTC)
"""No ralph wrote an event before this: an earlier ``ts`` is read as this moment."""
LATEST_AHEAD = timedelta(days=1)
"""A ``ts`` more than this ahead of the clock is read as that moment (clocks drift, a
little)."""
MAX_SECONDS = 366 * 86400.0
"""The most one agent run or one check can have taken, as far as stats go."""
MAX_TOKENS = 10**12
MAX_COST_USD = 1e6
MAX_ATTEMPT = 10_000
MAX_NAME = 200
"""Task ids, failure classes and check commands are cut to this many characters."""
MAX_DAYS = 3660
"""The trend covers at most this many days (ten years), ending with the last finish."""


def event_time(event: Event) -> datetime | None:
    """The event's ``ts`` in UTC, or None when it is missing or unreadable; a time before
    ``EARLIEST`` or after tomorrow is read as that bound."""
    ts = event.get("ts")
    if not isinstance(ts, str) or len(ts) > 64:
        return None
    try:
        moment = datetime.fromisoformat(ts)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return min(max(moment, EARLIEST), datetime.now(UTC) + LATEST_AHEAD)


def events_since(events: Iterable[Event], since: datetime) -> list[Event]:
    """The events whose ``ts`` is at or after ``since`` (events without a time are dropped)."""
    return [event for event in events if (moment := event_time(event)) and moment >= since]


@dataclass(frozen=True)
class TaskStats:
    """One task's numbers in the window."""

    task: str
    outcome: Literal["done", "failed"] | None
    """``done`` with a task_done event, else ``failed`` with a task_failed event, else None."""
    attempts: int
    first_attempt: bool
    """Done with ``task_done.attempts == 1``."""
    finished_on: str | None
    """UTC day (YYYY-MM-DD) of the task_done, else of the last task_failed."""
    failures_by_class: dict[str, int]
    failures_by_check: dict[str, int]
    interrupted: int
    agent_seconds: float
    check_seconds: float
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None


@dataclass(frozen=True)
class DayStats:
    """The tasks that finished on one UTC day."""

    day: str
    finished: int
    done: int
    done_first_attempt: int
    first_attempt_rate: float | None


@dataclass(frozen=True)
class Stats:
    """Per task, per day and overall numbers over one window of the event log."""

    since: str | None
    tasks: list[TaskStats]
    days: list[DayStats]
    finished: int
    done: int
    failed: int
    done_first_attempt: int
    success_rate: float | None
    first_attempt_rate: float | None
    attempts: int
    mean_attempts: float | None
    attempts_histogram: dict[int, int]
    failures_by_class: dict[str, int]
    failures_by_check: dict[str, int]
    interrupted: int
    agent_seconds: float
    check_seconds: float
    agent_runs: int
    agent_runs_without_cost: int
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    retries: int
    """``task_retried`` events: each is a person putting a failed task back."""
    rechecks: int = 0
    """Changes the merge queue checked again because the branch had moved."""
    recheck_seconds: float = 0.0
    """Time in those re-checks (also in ``check_seconds``)."""
    conflict_seconds: float = 0.0
    """Agent and check time of attempts that ended in a conflict: work thrown away."""
    waited_seconds: float = 0.0
    """Time ralph waited out usage limits and outages (``waiting`` events)."""
    manual_commits: int | None = None
    """Commits not made by ralph after its first one; None until read from git."""

    @property
    def manual_interventions(self) -> int | None:
        if self.manual_commits is None:
            return None
        return self.manual_commits + self.retries

    def with_manual_commits(self, commits: int) -> Stats:
        return replace(self, manual_commits=commits)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of ``ralph stats --json``."""
        overall = asdict(self)
        tasks, days = overall.pop("tasks"), overall.pop("days")
        since = overall.pop("since")
        overall["attempts_histogram"] = {str(k): v for k, v in self.attempts_histogram.items()}
        overall["manual_interventions"] = self.manual_interventions
        return {"since": since, "overall": overall, "days": days, "tasks": tasks}


def summary_rows(stats: Stats) -> list[tuple[str, str]]:
    """The overall numbers as (label, value) rows, for a terminal or a report."""
    return [
        ("tasks finished", f"{stats.finished} ({stats.done} done, {stats.failed} failed)"),
        ("success rate", _percent(stats.success_rate)),
        ("first-attempt success rate", _percent(stats.first_attempt_rate)),
        ("attempts", str(stats.attempts)),
        ("mean attempts per finished task", _number(stats.mean_attempts, ".2f")),
        ("interrupted attempts (not counted)", str(stats.interrupted)),
        ("failures by class", _counts(stats.failures_by_class)),
        ("failures by check", _counts(stats.failures_by_check)),
        ("time in the agent", _duration(stats.agent_seconds)),
        ("time in checks", _duration(stats.check_seconds)),
        ("re-checks in the merge queue", f"{stats.rechecks} ({_duration(stats.recheck_seconds)})"),
        ("time lost to conflicts", _duration(stats.conflict_seconds)),
        ("time waiting out limits", _duration(stats.waited_seconds)),
        ("tokens in / out", f"{_number(stats.input_tokens)} / {_number(stats.output_tokens)}"),
        ("cost", _cost(stats)),
        (
            "manual interventions",
            f"{_number(stats.manual_interventions)} "
            f"({_number(stats.manual_commits)} commits, {stats.retries} retries)",
        ),
    ]


TASK_COLUMNS = (
    "task",
    "outcome",
    "attempts",
    "first try",
    "finished",
    "failures",
    "agent s",
    "checks s",
    "cost $",
)


def task_rows(stats: Stats) -> list[list[str]]:
    """One row of text per task, in the order of ``TASK_COLUMNS``."""
    return [
        [
            task.task,
            task.outcome or "unfinished",
            str(task.attempts),
            "yes" if task.first_attempt else "no",
            task.finished_on or "-",
            _counts(task.failures_by_class),
            f"{task.agent_seconds:.1f}",
            f"{task.check_seconds:.1f}",
            _number(task.cost_usd, ".4f"),
        ]
        for task in stats.tasks
    ]


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _number(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value}" for key, value in counts.items()) or "-"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


def _cost(stats: Stats) -> str:
    known = "-" if stats.cost_usd is None else f"${stats.cost_usd:.4f}"
    if stats.agent_runs_without_cost:
        return f"{known} ({stats.agent_runs_without_cost} of {stats.agent_runs} runs unreported)"
    return known


@dataclass
class _Tally:
    """A task's events folded up, in log order."""

    task: str
    round: int = 0
    runs: list[tuple[tuple[int, int], bool]] = field(default_factory=list)
    """Each attempt_started as ((round, attempt number), ended as interrupted)."""
    done_at: datetime | None = None
    done_attempts: int | None = None
    failed_at: datetime | None = None
    failures: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)
    agent_seconds: float = 0.0
    check_seconds: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    agent_runs: int = 0
    agent_runs_without_cost: int = 0
    attempt_seconds: float = 0.0
    """Agent and check time of the attempt in progress (reset at each attempt_started)."""
    conflict_seconds: float = 0.0
    rechecks: int = 0
    recheck_seconds: float = 0.0

    def attempts(self) -> int:
        # ralph runs the same attempt number again after a rate limit, an outage or an
        # interruption, and `ralph retry` starts the numbers over: hence (round, number).
        return len({key for key, interrupted in self.runs if not interrupted})

    def freeze(self) -> TaskStats:
        finished_at = self.done_at or self.failed_at
        outcome: Literal["done", "failed"] | None = (
            "done" if self.done_at else "failed" if self.failed_at else None
        )
        return TaskStats(
            task=self.task,
            outcome=outcome,
            attempts=self.attempts(),
            first_attempt=self.done_at is not None and self.done_attempts == 1,
            finished_on=finished_at.date().isoformat() if finished_at else None,
            failures_by_class=_ranked(self.failures),
            failures_by_check=_ranked(self.checks),
            interrupted=sum(interrupted for _key, interrupted in self.runs),
            agent_seconds=round(self.agent_seconds, 3),
            check_seconds=round(self.check_seconds, 3),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=None if self.cost_usd is None else round(self.cost_usd, 6),
        )


def _ranked(counts: Counter[str]) -> dict[str, int]:
    """Most frequent first; ties by name, so the output is stable."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _whole(value: Any, limit: int) -> int | None:
    """A whole number from 0 to ``limit`` (larger ones are read as ``limit``); None for
    anything else (a negative number, a fraction, text, true/false)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, limit)


def _amount(value: Any, limit: float) -> float | None:
    """A finite number from 0 to ``limit`` (larger ones are read as ``limit``); None for
    anything else (negative, NaN, infinite, text, true/false)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(min(value, limit)) if isinstance(value, int) else value
    if not math.isfinite(number) or number < 0:
        return None
    return min(number, limit)


def _name(value: Any, default: str = "unknown") -> str:
    text = str(value) if value else default
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


def _plus_int(total: int | None, value: Any) -> int | None:
    """``total + value``, where a null value adds nothing and nulls only stay null."""
    number = _whole(value, MAX_TOKENS)
    return total if number is None else (total or 0) + number


def _plus_float(total: float | None, value: Any) -> float | None:
    number = _amount(value, MAX_COST_USD)
    return total if number is None else (total or 0.0) + number


def _on_attempt_started(tally: _Tally, event: Event) -> None:
    tally.attempt_seconds = 0.0
    number = _whole(event.get("attempt"), MAX_ATTEMPT)
    if number is not None:
        tally.runs.append(((tally.round, number), False))


def _on_rolled_back(tally: _Tally, event: Event) -> None:
    reason = _name(event.get("reason"))
    if reason == "interrupted":
        # A stop is nobody's fault: the attempt doesn't count, and it is no failure.
        number = _whole(event.get("attempt"), MAX_ATTEMPT)
        if tally.runs and number is not None and tally.runs[-1][0][1] == number:
            tally.runs[-1] = (tally.runs[-1][0], True)
        return
    if reason == "conflict":  # the agent's and the checks' work, thrown away by the queue
        tally.conflict_seconds += tally.attempt_seconds
    tally.failures[reason] += 1


def _on_agent_exited(tally: _Tally, event: Event) -> None:
    seconds = _amount(event.get("duration_s"), MAX_SECONDS) or 0.0
    tally.agent_seconds += seconds
    tally.attempt_seconds += seconds
    tally.input_tokens = _plus_int(tally.input_tokens, event.get("input_tokens"))
    tally.output_tokens = _plus_int(tally.output_tokens, event.get("output_tokens"))
    tally.cost_usd = _plus_float(tally.cost_usd, event.get("cost_usd"))
    tally.agent_runs += 1
    tally.agent_runs_without_cost += _amount(event.get("cost_usd"), MAX_COST_USD) is None


def _on_check_finished(tally: _Tally, event: Event) -> None:
    seconds = _amount(event.get("duration_s"), MAX_SECONDS) or 0.0
    tally.check_seconds += seconds
    tally.attempt_seconds += seconds
    # A check cut short by a stop is no failure of the check.
    if event.get("passed") is False and event.get("outcome") != "stopped":
        tally.checks[_name(event.get("command"), "None")] += 1


def _on_task_done(tally: _Tally, event: Event) -> None:
    tally.done_at = event_time(event)
    tally.done_attempts = _whole(event.get("attempts"), MAX_ATTEMPT)


def _on_task_failed(tally: _Tally, event: Event) -> None:
    tally.failed_at = event_time(event)


def _on_task_retried(tally: _Tally, _event: Event) -> None:
    tally.round += 1


def _on_rechecked(tally: _Tally, event: Event) -> None:
    tally.rechecks += 1
    tally.recheck_seconds += _amount(event.get("duration_s"), MAX_SECONDS) or 0.0


_FOLD: dict[str, Callable[[_Tally, Event], None]] = {
    "attempt_started": _on_attempt_started,
    "rolled_back": _on_rolled_back,
    "agent_exited": _on_agent_exited,
    "check_finished": _on_check_finished,
    "task_done": _on_task_done,
    "task_failed": _on_task_failed,
    "task_retried": _on_task_retried,
    "rechecked": _on_rechecked,
}


def _tallies(events: Iterable[Event]) -> list[_Tally]:
    tallies: dict[str, _Tally] = {}
    for event in events:
        fold = _FOLD.get(str(event.get("event")))
        task = event.get("task")
        if fold is None or not isinstance(task, str):
            continue
        task = _name(task)
        fold(tallies.setdefault(task, _Tally(task)), event)
    return list(tallies.values())


def compute_stats(events: Iterable[Event], since: datetime | None = None) -> Stats:
    """Every number of ``ralph stats`` from the events (those at or after ``since``)."""
    window = list(events) if since is None else events_since(events, since)
    tallies = _tallies(window)
    tasks = sorted((tally.freeze() for tally in tallies), key=lambda t: t.task)
    finished = [task for task in tasks if task.outcome is not None]
    done = [task for task in finished if task.outcome == "done"]
    first = [task for task in done if task.first_attempt]
    return Stats(
        since=since.isoformat() if since else None,
        tasks=tasks,
        days=_days(finished),
        finished=len(finished),
        done=len(done),
        failed=len(finished) - len(done),
        done_first_attempt=len(first),
        success_rate=_rate(len(done), len(finished)),
        first_attempt_rate=_rate(len(first), len(finished)),
        attempts=sum(task.attempts for task in tasks),
        mean_attempts=(
            round(sum(t.attempts for t in finished) / len(finished), 3) if finished else None
        ),
        attempts_histogram=dict(sorted(Counter(task.attempts for task in finished).items())),
        failures_by_class=_ranked(sum((Counter(t.failures_by_class) for t in tasks), Counter())),
        failures_by_check=_ranked(sum((Counter(t.failures_by_check) for t in tasks), Counter())),
        interrupted=sum(task.interrupted for task in tasks),
        agent_seconds=round(sum((task.agent_seconds for task in tasks), 0.0), 3),
        check_seconds=round(sum((task.check_seconds for task in tasks), 0.0), 3),
        agent_runs=sum(tally.agent_runs for tally in tallies),
        agent_runs_without_cost=sum(tally.agent_runs_without_cost for tally in tallies),
        input_tokens=_sum_ints(task.input_tokens for task in tasks),
        output_tokens=_sum_ints(task.output_tokens for task in tasks),
        cost_usd=_sum_floats(task.cost_usd for task in tasks),
        retries=sum(event.get("event") == "task_retried" for event in window),
        rechecks=sum(tally.rechecks for tally in tallies),
        recheck_seconds=round(sum((tally.recheck_seconds for tally in tallies), 0.0), 3),
        conflict_seconds=round(sum((tally.conflict_seconds for tally in tallies), 0.0), 3),
        waited_seconds=round(
            sum(
                _amount(event.get("seconds"), MAX_SECONDS) or 0.0
                for event in window
                if event.get("event") == "waiting"
            ),
            3,
        ),
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _sum_ints(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def _sum_floats(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return round(sum(known), 6) if known else None


def _days(finished: list[TaskStats]) -> list[DayStats]:
    """One entry per UTC day from the first finish to the last, quiet days included (at
    most the last ``MAX_DAYS`` days)."""
    by_day: dict[str, list[TaskStats]] = {}
    for task in finished:
        assert task.finished_on is not None
        by_day.setdefault(task.finished_on, []).append(task)
    if not by_day:
        return []
    first, last = date.fromisoformat(min(by_day)), date.fromisoformat(max(by_day))
    first = max(first, last - timedelta(days=MAX_DAYS - 1))
    days = []
    for offset in range((last - first).days + 1):
        day = (first + timedelta(days=offset)).isoformat()
        tasks = by_day.get(day, [])
        done = sum(task.outcome == "done" for task in tasks)
        first_attempt = sum(task.first_attempt for task in tasks)
        days.append(
            DayStats(day, len(tasks), done, first_attempt, _rate(first_attempt, len(tasks)))
        )
    return days


def work_branch(events: Iterable[Event]) -> str | None:
    """The branch of the last ``run_started`` event: where ralph commits."""
    branch = None
    for event in events:
        if event.get("event") == "run_started" and isinstance(event.get("branch"), str):
            branch = event["branch"]
    return branch


def manual_commits(root: Path, branch: str | None = None, since: datetime | None = None) -> int:
    """Commits on ``branch`` (else HEAD) that ralph didn't make, after its first commit.

    A commit is ralph's when its message has a Ralph-Task or Ralph-Learnings trailer.
    With ``since``, only commits committed at or after it count.
    """
    count, seen_ralph = 0, False
    for stamp, by_ralph in repo.commit_trailers(root, branch):
        if by_ralph:
            seen_ralph = True
        elif seen_ralph and (since is None or stamp >= since.timestamp()):
            count += 1
    return count
