"""Live reading inside a real run: ralph acts on what the agent prints while it still runs.

The scripted agent plays Claude Code by printing its recorded stream-json events slowly
(``tests/fixtures/agents``); ralph must come to its verdict from the stream, long before
the agent would have exited or the attempt timed out.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from conftest import Project

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
SLOW = 0.5
"""Seconds between the lines the agent prints."""


def printing(lines: list[str], then_sleep: float) -> list[dict[str, Any]]:
    """Steps that print each line ``SLOW`` seconds apart, then sleep."""
    steps: list[dict[str, Any]] = []
    for line in lines:
        steps += [{"print": line}, {"sleep": SLOW}]
    return [*steps, {"sleep": then_sleep}]


def fixture_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def named(project: Project, name: str) -> list[dict[str, Any]]:
    return [event for event in project.events() if event["event"] == name]


def test_a_refused_key_stops_the_run_while_the_cli_still_retries(project: Project) -> None:
    """Claude Code's ten 401 retries take about three minutes; ralph stops the agent at the
    second, exits 2 within seconds, and the attempt is not counted."""
    project.spec("task")
    project.configure(attempt_timeout="2m")
    project.attempts("task", {"steps": printing(fixture_lines("claude-401-retrying.jsonl"), 60)})
    project.commit()
    started = time.monotonic()
    result = project.ralph("run", "--once", check_code=2, timeout=90)
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert "could not authenticate" in result.stderr
    assert "401" in result.stderr
    exited = named(project, "agent_exited")
    assert [(e["outcome"], e["failure_class"]) for e in exited] == [("halted", "auth")]
    stopped = named(project, "agent_stopped_early")
    assert [(e["signal"], e["status"], e["retry"]) for e in stopped] == [("auth_failed", 401, 2)]
    retrying = named(project, "agent_retrying")
    assert [e["decision"] for e in retrying] == ["left to the CLI", "ralph stops the agent"]
    task = project.status_json()["task"]
    assert (task["state"], task["attempts"]) == ("pending", 0)


def test_a_long_limit_is_waited_out_by_ralph_not_inside_the_agent(project: Project) -> None:
    """A 429 the CLI would wait ten minutes for: ralph stops the agent, waits itself (it
    says so in events and `ralph status`), and the attempt is not counted."""
    project.spec("task")
    project.configure(attempt_timeout="2m")
    retry = {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 10,
        "retry_delay_ms": 600_000,
        "error_status": 429,
        "error": "rate_limit",
    }
    project.attempts("task", {"steps": printing([json.dumps(retry)], 60)})
    project.commit()
    process = project.popen("run", "--once")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _has(project, "waiting"):
            time.sleep(0.2)
        assert _has(project, "waiting"), process.stderr.read() if process.poll() else ""
        [waiting] = named(project, "waiting")
        assert waiting["reason"] == "usage_limit"
        assert 500 < waiting["seconds"] <= 610
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert process.returncode == 0
    [exited] = named(project, "agent_exited")
    assert (exited["outcome"], exited["failure_class"]) == ("halted", "usage_limit")
    assert project.status_json()["task"]["attempts"] == 0


def test_an_agent_that_goes_quiet_is_stopped_as_stalled(project: Project) -> None:
    """No event for agent_stall_timeout: the agent is stopped long before attempt_timeout,
    and the attempt fails with a class of its own."""
    project.spec("task", max_attempts=1)
    project.configure(attempt_timeout="2m", agent_stall_timeout="2s")
    init = fixture_lines("claude-401-retrying.jsonl")[0]
    project.attempts("task", {"steps": printing([init, init], 60)})
    project.commit()
    started = time.monotonic()
    project.ralph("run", "--once", check_code=1, timeout=90)
    assert time.monotonic() - started < 30
    [exited] = named(project, "agent_exited")
    assert exited["outcome"] == "stalled"
    [rolled] = named(project, "rolled_back")
    assert rolled["reason"] == "stalled"
    assert "The agent printed nothing for 2s." in rolled["summary"]
    task = project.status_json()["task"]
    assert (task["state"], task["failure_class"]) == ("failed", "stalled")
    stats = json.loads(project.ralph("stats", "--json", check_code=0).stdout)
    assert "stalled" in json.dumps(stats["overall"])


def test_events_keep_an_agent_alive_and_status_shows_the_last_one(project: Project) -> None:
    """A CLI retrying an overload prints an event every few seconds: never stalled, and
    `ralph status` shows what it last said and how long ago."""
    project.spec("task")
    project.configure(attempt_timeout="2m", agent_stall_timeout="3s")
    retry = {
        "type": "system",
        "subtype": "api_retry",
        "attempt": 1,
        "max_retries": 10,
        "retry_delay_ms": 2000,
        "error_status": 529,
        "error": "overloaded",
    }
    steps: list[dict[str, Any]] = []
    for n in range(1, 5):
        steps += [{"print": json.dumps({**retry, "attempt": n})}, {"sleep": 2}]
    steps += [{"write": "done.txt", "content": "done\n"}]
    project.attempts("task", {"steps": steps})
    project.commit()
    process = project.popen("run", "--once")
    seen: list[dict[str, Any] | None] = []
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            running = project.status_json()["task"]
            if running["state"] == "running":
                seen.append(running["agent_event"])
            time.sleep(0.5)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert project.task_commits() == [("task", "1")]
    events = [event for event in seen if event]
    assert events, seen
    assert {event["signal"] for event in events} == {"api_outage"}
    assert all(0 <= event["age_s"] < 10 for event in events)
    retrying = named(project, "agent_retrying")
    assert len(retrying) == 4 and {e["decision"] for e in retrying} == {"left to the CLI"}


def _has(project: Project, name: str) -> bool:
    try:
        return bool(named(project, name))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
