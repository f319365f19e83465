"""Parallel workers: N agents at once, each in its own worktree, landing through one merge
queue that re-checks what it replays."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Project

FAST = {"attempt_timeout": "30s", "kill_grace": "0.5s", "poll_interval": "0.3s"}


def events(project: Project) -> list[dict[str, Any]]:
    path = project.root / ".ralph" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def named(project: Project, name: str) -> list[dict[str, Any]]:
    return [event for event in events(project) if event["event"] == name]


def wait_for(condition: Callable[[], Any], timeout: float = 20, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def overlapping(project: Project) -> set[frozenset[str]]:
    """Pairs of tasks whose agents ran at the same time (from agent start/exit events)."""
    spans: list[tuple[str, float, float]] = []
    starts: dict[tuple[str, int], float] = {}
    for event in events(project):
        key = (event.get("task", ""), event.get("worker", 0))
        if event["event"] == "attempt_started":
            starts[key] = event["mono"]
        elif event["event"] == "agent_exited" and key in starts:
            spans.append((key[0], starts.pop(key), event["mono"]))
    pairs = set()
    for a, a0, a1 in spans:
        for b, b0, b1 in spans:
            if a < b and a0 < b1 and b0 < a1:
                pairs.add(frozenset((a, b)))
    return pairs


def test_three_workers_do_every_task_once_in_dependency_order(project: Project) -> None:
    """With workers = 3, every task is committed exactly once, dependencies first, and agents
    really run at the same time."""
    project.configure(**FAST, workers=3)
    for n in range(6):
        project.spec(f"t{n}")
        project.attempts(
            f"t{n}", {"steps": [{"write": f"t{n}.txt", "content": f"{n}\n"}, {"sleep": 1}]}
        )
    project.spec("last", depends_on=["t0", "t1"])
    project.attempts("last", {"steps": [{"write": "last.txt", "content": "last\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=120)
    commits = [task for task, _ in project.task_commits()]
    assert collections.Counter(commits) == collections.Counter(
        [*(f"t{n}" for n in range(6)), "last"]
    )
    assert commits.index("last") > max(commits.index("t0"), commits.index("t1"))
    assert overlapping(project), "no two agents ever ran at the same time"
    workers = {event["worker"] for event in named(project, "attempt_started")}
    assert workers == {0, 1, 2}
    assert project.git("status", "--porcelain") == ""
    listed = project.git("worktree", "list", "--porcelain")
    assert "prunable" not in listed


def test_a_conflicting_pair_is_resolved_by_a_retry_on_the_new_tip(project: Project) -> None:
    """Two tasks that change the same lines: the second to land conflicts, its attempt isn't
    used, and its next attempt starts from the new tip and lands."""
    project.configure(**FAST, workers=2)
    project.write("shared.txt", "base\n")
    for name in ("a", "b"):
        project.spec(name)
        project.attempts(
            name,
            {
                "steps": [
                    {"run": f'echo "{name} was here" > shared.txt'},
                    {"write": f"{name}.txt", "content": "x\n"},
                    {"sleep": 1},
                ]
            },
        )
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=120)
    assert sorted(task for task, _ in project.task_commits()) == ["a", "b"]
    conflicts = [e for e in named(project, "rolled_back") if e["reason"] == "conflict"]
    assert len(conflicts) == 1
    # The conflict didn't use an attempt: both tasks are committed as attempt 1.
    assert sorted(project.task_commits()) == [("a", "1"), ("b", "1")]
    assert overlapping(project)


def test_tasks_that_all_change_one_file_all_land(project: Project) -> None:
    """The merge queue's worst case: every task appends to the same file. Each conflict's
    next attempt runs alone, so every task lands, once, instead of conflicting with the
    others until its conflicts run out."""
    project.configure(**FAST, workers=3)
    project.write("shared.txt", "")
    names = [f"s{n}" for n in range(6)]
    for name in names:
        project.spec(name)
        steps = [{"run": f'echo "{name}" >> shared.txt'}, {"sleep": 0.5}]
        project.attempts(name, *({"steps": steps} for _ in range(6)))
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=120)
    assert sorted(task for task, _ in project.task_commits()) == names
    lines = (project.root / "shared.txt").read_text().split()
    assert sorted(lines) == names
    assert named(project, "task_failed") == []
    conflicts = [e for e in named(project, "rolled_back") if e["reason"] == "conflict"]
    assert conflicts, "the tasks never met in the queue: the test proves nothing"


def test_a_change_that_fails_only_with_another_tasks_commit_is_never_committed(
    project: Project,
) -> None:
    """Each change passes the check alone; together they don't: the one replayed onto the
    other's commit is re-checked, fails, and is not committed."""
    # The check: at most one of a.txt and b.txt may exist.
    project.configure(
        **FAST, workers=2, max_attempts=1, checks=["! (test -f a.txt && test -f b.txt)"]
    )
    for name in ("a", "b"):
        project.spec(name)
        project.attempts(
            name, {"steps": [{"write": f"{name}.txt", "content": "x\n"}, {"sleep": 1}]}
        )
    project.commit()
    project.ralph("run", "--once", check_code=1, timeout=120)
    assert len(project.task_commits()) == 1
    rechecks = named(project, "rechecked")
    assert [e["passed"] for e in rechecks] == [False]
    failed = [e for e in named(project, "rolled_back") if e["reason"] == "check_failed"]
    assert len(failed) == 1
    tree = project.git("ls-tree", "--name-only", "HEAD").split()
    assert not ("a.txt" in tree and "b.txt" in tree)


def test_touches_keep_overlapping_tasks_apart(project: Project) -> None:
    """Tasks whose touches overlap never run at the same time; others still do."""
    project.configure(**FAST, workers=3)
    layout = {"api1": ["src/api/**"], "api2": ["src/api/users.py"], "docs": ["docs/**"]}
    for name, touches in layout.items():
        project.spec(name, touches=touches)
        path = touches[0].replace("**", "x.txt")
        project.attempts(name, {"steps": [{"write": path, "content": "x\n"}, {"sleep": 1.5}]})
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=120)
    pairs = overlapping(project)
    assert frozenset(("api1", "api2")) not in pairs
    assert frozenset(("api1", "docs")) in pairs or frozenset(("api2", "docs")) in pairs


def test_a_change_outside_touches_fails_the_attempt(project: Project) -> None:
    """A task that writes outside its declared touches fails with outside_touches."""
    project.configure(**FAST, max_attempts=1)
    project.spec("api", touches=["src/api/**"])
    project.attempts("api", {"steps": [{"write": "src/web/page.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    assert [e["reason"] for e in named(project, "rolled_back")] == ["outside_touches"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_with_three_agents_running(project: Project, sig: int) -> None:
    """With three agents running, SIGTERM stops them all and exits 0; SIGKILL leaves them to
    the next start, which stops them, keeps their diffs and finishes every task once."""
    project.configure(**FAST, workers=3)
    for n in range(3):
        project.spec(f"s{n}")
        project.attempts(
            f"s{n}",
            {"steps": [{"write": f"s{n}.txt", "content": "x\n"}, {"sleep": 30}]},
            {"steps": [{"write": f"s{n}.txt", "content": "x\n"}]},
        )
    project.commit()
    proc = project.popen("run")
    wait_for(
        lambda: all(
            (project.current_attempt(n) or {}).get("pgid")
            and any(project.worktree(n).glob("s*.txt"))
            for n in range(3)
        ),
        what="three agents at work",
    )
    proc.send_signal(sig)
    proc.wait(timeout=20)
    proc.communicate()
    if sig == signal.SIGTERM:
        assert proc.returncode == 0
        assert [e["reason"] for e in named(project, "rolled_back")] == ["interrupted"] * 3
        assert project.task_commits() == []
    project.ralph("run", "--once", check_code=0, timeout=120)
    assert sorted(task for task, _ in project.task_commits()) == ["s0", "s1", "s2"]
    assert all(project.current_attempt(n) is None for n in range(3))
    if sig == signal.SIGKILL:
        diffs = list((project.root / ".ralph" / "attempts").rglob("interrupted.diff"))
        assert len(diffs) == 3
    leftover = subprocess.run(
        ["pgrep", "-f", str(project.script_path)], capture_output=True, text=True
    ).stdout.split()
    assert leftover == []


@pytest.mark.parametrize("round_", range(3))
def test_one_workers_error_ends_the_run_with_the_others_stopped(
    project: Project, round_: int
) -> None:
    """A refused key in one worker stops the run (exit 2) while two others run agents: they
    are stopped together and the run ends, however their endings arrive (it once waited
    forever when two came back in the same turn of the loop)."""
    project.configure(**FAST, workers=3)
    project.spec("a-auth", priority=1)
    project.attempts(
        "a-auth",
        {"steps": [{"sleep": 1}, {"print": "Invalid API key · Please run /login"}], "exit": 1},
    )
    for name in ("b-slow", "c-slow"):
        project.spec(name, priority=2)
        project.attempts(
            name, {"steps": [{"write": f"{name}.txt", "content": "x\n"}, {"sleep": 30}]}
        )
    project.commit()
    started = time.monotonic()
    result = project.ralph("run", "--once", check_code=2, timeout=60)
    assert time.monotonic() - started < 20
    assert "could not authenticate" in result.stderr
    stopped = sorted(
        e["task"] for e in named(project, "rolled_back") if e["reason"] == "interrupted"
    )
    assert stopped == ["b-slow", "c-slow"]
    assert [e["reason"] for e in named(project, "run_finished")] == ["auth"]


def test_learnings_of_all_workers_are_merged_without_loss(project: Project) -> None:
    """Every worker's learnings reach the memory file, none lost, none twice."""
    project.configure(**FAST, workers=3)
    for n in range(5):
        project.spec(f"l{n}")
        project.attempts(
            f"l{n}",
            {
                "steps": [
                    {"write": f"l{n}.txt", "content": "x\n"},
                    {"learn": f"Lesson {n}: the l{n} module keeps its state in l{n}.txt"},
                    {"sleep": 0.5},
                ]
            },
        )
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=120)
    memory = (project.root / "AGENTS.md").read_text()
    assert [memory.count(f"Lesson {n}:") for n in range(5)] == [1] * 5
