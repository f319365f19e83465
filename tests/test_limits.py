"""Failed agent runs by class: limits and outages wait, auth stops, the breaker and the cost cap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Project


def fail_once(marker: Path, message: str) -> dict[str, object]:
    """A scripted step that prints ``message`` and exits 1 the first time only."""
    command = f"test -f {marker} || {{ touch {marker}; echo '{message}'; exit 1; }}"
    return {"run": command, "check": True}


def agent_classes(project: Project) -> list[object]:
    return [e["failure_class"] for e in project.events() if e["event"] == "agent_exited"]


@pytest.mark.parametrize(
    ("message", "failure_class"),
    [
        ("API Error: 529 Overloaded. This is a server-side issue, usually temporary", "api_outage"),
        ("Claude AI usage limit reached|1000000000", "usage_limit"),
        (
            "You have exhausted your capacity on this model. Your quota will reset after 1s.",
            "usage_limit",
        ),
    ],
    ids=["outage", "limit-already-reset", "limit-in-1s"],
)
def test_transient_failure_is_retried_without_using_an_attempt(
    project: Project, tmp_path: Path, message: str, failure_class: str
) -> None:
    """An outage or usage limit is waited out and the same attempt runs again."""
    project.spec("task", max_attempts=1)
    project.configure(retry_backoff="0.1s")
    project.attempts(
        "task",
        {"steps": [fail_once(tmp_path / "once", message), {"write": "x.txt", "content": "x\n"}]},
    )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert agent_classes(project) == [failure_class, None]
    assert project.task_commits() == [("task", "1")]
    waiting = [e for e in project.events() if e["event"] == "waiting"]
    assert [e["reason"] for e in waiting] == [failure_class]


def test_auth_failure_stops_the_run_with_exit_2(project: Project) -> None:
    """Bad credentials stop ralph (exit 2, saying so); the attempt is not counted."""
    project.spec("a-task")
    project.spec("b-other")
    project.attempts(
        "a-task", {"steps": [{"print": "Invalid API key · Please run /login"}], "exit": 1}
    )
    project.commit()
    result = project.ralph("run", "--once", check_code=2)
    assert "could not authenticate" in result.stderr
    assert "Invalid API key" in result.stderr and "Please run /login" in result.stderr
    assert "```" not in result.stderr
    tasks = project.status_json()
    assert tasks["a-task"]["attempts"] == 0 and tasks["a-task"]["state"] == "pending"
    assert [e["task"] for e in project.events() if e["event"] == "task_started"] == ["a-task"]


def test_usage_limit_resetting_too_late_stops_the_run(project: Project) -> None:
    """A limit that resets after retry_max_wait stops the run (exit 1) naming the reset time."""
    project.spec("task")
    project.configure(retry_max_wait="1m")
    project.attempts(
        "task", {"steps": [{"print": "Claude AI usage limit reached|4102444800"}], "exit": 1}
    )
    project.commit()
    result = project.ralph("run", "--once", check_code=1)
    assert "resets at 2100-01-01" in result.stderr


def test_outage_that_never_ends_counts_as_a_failed_attempt(project: Project) -> None:
    """Past retry_max_wait an outage stops being waited out and uses up the attempt."""
    project.spec("task", max_attempts=1)
    project.configure(retry_backoff="0.2s", retry_max_wait="1s")
    project.attempts("task", {"steps": [{"print": "503 Service Unavailable"}], "exit": 1})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    classes = agent_classes(project)
    assert len(classes) >= 2 and set(classes) == {"api_outage"}
    task = project.status_json()["task"]
    assert (task["state"], task["failure_class"]) == ("failed", "api_outage")


def test_breaker_stops_after_consecutive_failures_of_one_class(project: Project) -> None:
    """breaker_threshold tasks in a row failing the same way stop the run with exit 1."""
    for name in ("a", "b", "c"):
        project.spec(name, max_attempts=1)
        project.attempts(name, {"steps": [{"write": f"{name}.txt", "content": "x\n"}]})
    project.configure(checks=["false"], breaker_threshold=2)
    project.commit()
    result = project.ralph("run", "--once", check_code=1)
    assert "2 tasks in a row failed with check_failed" in result.stderr
    started = [e["task"] for e in project.events() if e["event"] == "task_started"]
    assert started == ["a", "b"]
    assert project.status_json()["c"]["state"] == "pending"


def test_cost_cap_takes_no_new_task(project: Project) -> None:
    """Once the agents' reported spend reaches max_cost_usd, no new task starts."""
    report = json.dumps({"ralph_report": {"cost_usd": 0.6, "input_tokens": 10}})
    for name in ("a", "b", "c"):
        project.spec(name)
        project.attempts(
            name, {"steps": [{"print": report}, {"write": f"{name}.txt", "content": "x\n"}]}
        )
    project.configure(max_cost_usd=1.0)
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert [task for task, _ in project.task_commits()] == ["a", "b"]
    assert any(e["event"] == "cost_cap_reached" for e in project.events())
    costs = [e["cost_usd"] for e in project.events() if e["event"] == "agent_exited"]
    assert costs == [0.6, 0.6]
