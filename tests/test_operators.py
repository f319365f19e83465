"""An operator's night: people commit, drop specs, reset branches and retry tasks while ralph
works, and nothing of theirs is lost, reset or blamed on an agent."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Project

FAST = {"attempt_timeout": "30s", "kill_grace": "0.5s", "poll_interval": "0.3s"}


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def events(project: Project) -> list[dict[str, Any]]:
    path = project.root / ".ralph" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(project: Project, name: str) -> list[dict[str, Any]]:
    return [event for event in events(project) if event["event"] == name]


@pytest.fixture
def daemon(project: Project) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``ralph run``; whatever still runs at the end gets SIGTERM."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = project.popen("run", *args)
        started.append(proc)
        wait_for(lambda: named(project, "run_started") or proc.poll() is not None)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def person_commits(project: Project, *paths: str, message: str) -> str:
    project.git("add", "--", *paths)
    project.git("commit", "-q", "-m", message)
    return project.head()


def test_a_persons_commit_during_an_attempt_is_kept_and_not_blamed(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """A spec committed by a person while an agent works stays on the branch; the task lands
    on top of it, and no attempt fails for it."""
    project.configure(**FAST)
    project.spec("slow")
    project.attempts("slow", {"steps": [{"write": "slow.txt", "content": "slow\n"}, {"sleep": 2}]})
    project.attempts("new", {"steps": [{"write": "new.txt", "content": "new\n"}]})
    project.commit()
    proc = daemon()
    wait_for(lambda: named(project, "attempt_started"), what="the agent to start")
    project.spec("new")
    persons = person_commits(project, "specs/new.md", message="Add spec")
    wait_for(lambda: len(named(project, "task_done")) == 2, what="both tasks")
    assert proc.poll() is None
    history = project.git("log", "--format=%H %s").splitlines()
    assert any(line.startswith(persons) for line in history), "the person's commit is gone"
    assert not named(project, "rolled_back")
    assert project.task_commits() == [("slow", "1"), ("new", "1")]
    assert project.git("status", "--porcelain") == ""


def test_a_commit_during_the_checks_takes_nothing_of_the_agents(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """`git commit -am` by a person while checks run commits only the person's edit; the
    task's own commit holds only the agent's file."""
    project.configure(**FAST, checks=["sleep 2", "true"])
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "agent.txt", "content": "agent\n"}]})
    project.commit()
    daemon()
    wait_for(lambda: named(project, "agent_exited"), what="the checks to start")
    project.write("README.md", "a person's edit\n")
    project.git("commit", "-q", "-am", "person edits README")
    persons = project.head()
    wait_for(lambda: named(project, "task_done"), what="the task to land")
    assert project.git("show", "--name-only", "--format=", persons).split() == ["README.md"]
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["agent.txt"]
    assert (project.root / "README.md").read_text() == "a person's edit\n"


def test_specs_dropped_during_a_long_attempt_fail_nothing(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """Specs dropped into specs/ every few tenths of a second while an agent works don't
    fail its attempt; each becomes a task of its own and is done."""
    project.configure(**FAST, max_attempts=1)
    project.spec("long")
    project.attempts("long", {"steps": [{"write": "long.txt", "content": "1\n"}, {"sleep": 3}]})
    project.script["default"] = {"steps": [{"run": 'echo done > "out-$RALPH_TASK_ID.txt"'}]}
    project.save_script()
    project.commit()
    daemon()
    wait_for(lambda: named(project, "attempt_started"), what="the agent to start")
    for n in range(8):
        project.spec(f"drop{n}")
        time.sleep(0.3)
    wait_for(lambda: len(named(project, "task_done")) == 9, timeout=60, what="every task")
    assert not named(project, "rolled_back")
    assert {task for task, _ in project.task_commits()} == {"long", *(f"drop{n}" for n in range(8))}
    dropped = sorted(p.name for p in (project.root / "specs").glob("drop*.md"))
    assert len(dropped) == 8  # still there, still the person's (uncommitted)


def test_a_task_undone_by_a_reset_starts_over_with_all_its_attempts(project: Project) -> None:
    """After the branch is reset below a task's commit, the task runs again from attempt 1,
    whatever attempt once got it done."""
    project.configure(max_attempts=2)
    project.spec("task")
    project.attempts(
        "task",
        {"steps": [{"write": "x.txt", "content": "x\n"}], "exit": 1},
        {"steps": [{"write": "x.txt", "content": "x\n"}]},
    )
    base = project.commit()
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("task", "2")]
    project.git("reset", "-q", "--hard", base)
    task = project.status_json()["task"]
    assert (task["state"], task["attempts"]) == ("pending", 0)
    project.ralph("run", "--once", check_code=0)
    exited = named(project, "agent_exited")
    assert len(exited) == 4  # attempt 1 failed again, attempt 2 ran and passed
    assert project.status_json()["task"]["state"] == "done"


def test_retry_wakes_an_idle_daemon_at_once(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """`ralph retry` while the daemon idles makes it run the task within a second or two,
    not at the next poll_interval."""
    project.configure(**{**FAST, "poll_interval": "1h", "max_attempts": 1})
    project.spec("flaky")
    project.attempts(
        "flaky",
        {"steps": [{"write": "x.txt", "content": "x\n"}], "exit": 1},
        {"steps": [{"write": "x.txt", "content": "x\n"}]},
    )
    project.commit()
    daemon()
    wait_for(lambda: named(project, "task_failed"), what="the task to fail once")
    time.sleep(0.5)
    asked = time.monotonic()
    project.ralph("retry", "flaky", check_code=0)
    wait_for(lambda: len(named(project, "task_started")) == 2, timeout=15, what="the retried task")
    assert time.monotonic() - asked < 10


def test_status_shows_an_interrupted_attempt_before_the_restart(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """After a SIGKILL and before the next start, `ralph status` says which attempt was
    interrupted and that it will be counted."""
    project.configure(**FAST)
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}, {"sleep": 30}]})
    project.commit()
    proc = daemon()
    wait_for(lambda: (project.current_attempt() or {}).get("pgid"), what="the agent")
    running = project.status_json()["task"]
    assert running["state"] == "running" and running["worker"] == 0 and running["since"]
    proc.kill()
    proc.wait()
    task = project.status_json()["task"]
    assert task["state"] == "pending" and task["interrupted_attempt"] == 1
    assert "interrupted" in task["reason"]


def test_old_attempt_folders_are_pruned_but_the_last_failure_kept(project: Project) -> None:
    """keep_attempts bounds .ralph/attempts; each task's last failed attempt stays."""
    project.configure(keep_attempts=2, max_attempts=1)
    for n in range(4):
        project.spec(f"ok{n}")
        project.attempts(f"ok{n}", {"steps": [{"write": f"ok{n}.txt", "content": "x\n"}]})
    project.spec("bad")
    project.attempts("bad", {"steps": [{"write": "bad.txt", "content": "x\n"}], "exit": 1})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    project.ralph("run", "--once", check_code=1)  # prunes at start
    folders = [p for p in (project.root / ".ralph" / "attempts").glob("*/*") if p.is_dir()]
    assert len(folders) <= 3
    assert any(p.parent.name == "bad" for p in folders)


@pytest.mark.parametrize("args", [("run", "--once"), ("status",)])
def test_errors_honour_log_format_json(project: Project, args: tuple[str, ...]) -> None:
    """With --log-format json, even an exit-2 error is one JSON object on stderr."""
    (project.root / "ralph.toml").write_text('checks = ["true"]\nbogus = 1\n')
    result = project.ralph(*args)
    assert result.returncode == 2
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["event"] == "ralph.error" and "bogus" in line["error"]


def test_a_second_ralph_is_refused_even_when_dot_ralph_is_deleted(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """Deleting .ralph/ (its lock file with it) while a daemon runs lets no second ralph in."""
    project.commit()
    daemon()
    import shutil

    shutil.rmtree(project.root / ".ralph")
    result = project.ralph("run", "--once")
    assert result.returncode == 75, result.stderr
    assert os.path.exists(project.root / ".git")


def test_an_agent_deleting_its_dot_git_makes_no_persons_commit_its_own(
    project: Project, daemon: Callable[..., subprocess.Popen[str]]
) -> None:
    """An agent that deletes its worktree's .git file can't make ralph take a person's commit,
    made during the attempt, for the agent's: the commit stays on the branch."""
    project.configure(**FAST)
    project.spec("sneaky")
    project.attempts(
        "sneaky",
        {
            "steps": [
                {"write": "x.txt", "content": "x\n"},
                {"sleep": 2},
                {"run": "rm -f .git", "check": True},
            ]
        },
    )
    project.commit()
    daemon()
    wait_for(lambda: named(project, "attempt_started"), what="the agent to start")
    project.write("person.txt", "mine\n")
    persons = person_commits(project, "person.txt", message="a person's commit")
    wait_for(lambda: named(project, "task_done"), what="the task to land")
    history = project.git("log", "--format=%H").split()
    assert persons in history
    assert (project.root / "person.txt").read_text() == "mine\n"
    assert not named(project, "refs_restored")


def test_two_tasks_failing_on_the_same_check_each_keep_their_own_lesson(
    project: Project,
) -> None:
    """Their failure lessons read alike but name different tasks: both are written, each
    under its own task, and neither is relabelled with the other's id."""
    check = "python3 -c 'import sys; sys.exit(1)'"
    project.configure(checks=[check], max_attempts=2)
    for name in ("first", "second"):
        project.spec(name)
        attempt = {"steps": [{"write": f"{name}.txt", "content": "x\n"}]}
        project.attempts(name, attempt, attempt)
    project.commit()
    project.ralph("run", "--once", check_code=1)
    memory = (project.root / "AGENTS.md").read_text()
    lessons = [
        re.sub(r" · \d{4}-\d\d-\d\d\]", " · DAY]", line)
        for line in memory.splitlines()
        if "failed 2 attempts" in line
    ]
    assert lessons == [
        f"- [{name} · DAY] Task {name} failed 2 attempts; check `{check}` failed in 2 of them."
        for name in ("first", "second")
    ]
