"""Fault injection: SIGKILL ralph at random moments, restart it, and check nothing is lost.

The number of kills and the seed come from FAULT_KILLS and FAULT_SEED, so a
longer campaign runs by hand with the same test:

    FAULT_KILLS=200 FAULT_SEED=7 .venv/bin/python -m pytest tests/test_crash.py -s

It runs with one worker and with three (every worktree recovered after every kill).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Project

from ralph.memory.file import existing_learnings

MIN_TASKS = 12
CHECK = 'for f in tasks/*.txt; do [ "$(cat "$f")" = ok ] || exit 1; done'


def agent_leftovers(root: Path) -> list[int]:
    """Live processes started by any attempt in this repository (they carry its prompt path)."""
    needle = f"RALPH_PROMPT_FILE={root}/.ralph/".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":
            found.append(int(entry.name))
    return found


def build_backlog(project: Project, tasks: int, workers: int = 1) -> None:
    for n in range(1, tasks + 1):
        task = f"t{n:02d}"
        project.spec(task, f"# Task {task}\n\nWrite tasks/{task}.txt.\n", max_attempts=100)
        good = {
            "steps": [
                {"sleep": 0.1},
                {"write": f"tasks/{task}.txt", "content": "ok"},
                {"learn": f"Lesson number {n} from {task}."},
            ]
        }
        # Every third task fails its first attempt, so rollbacks get killed too.
        first = {"steps": [{"write": f"tasks/{task}.txt", "content": "bad"}, {"sleep": 0.1}]}
        project.attempts(task, *([first, good] if n % 3 == 0 else [good]))
    project.configure(checks=[CHECK], kill_grace="1s", workers=workers)
    project.commit()


@pytest.mark.parametrize("workers", [1, 3], ids=["1-worker", "3-workers"])
def test_sigkill_at_random_moments_loses_nothing_and_doubles_nothing(
    project: Project, workers: int
) -> None:
    """After many SIGKILLs and restarts every task is committed once, checked, and clean."""
    kills_wanted = int(os.environ.get("FAULT_KILLS", "20"))
    rng = random.Random(int(os.environ.get("FAULT_SEED", "1")) + workers)
    # About five kills land per task; a longer campaign needs a longer backlog.
    tasks = max(MIN_TASKS, kills_wanted // 4) * (2 if workers > 1 else 1)
    build_backlog(project, tasks, workers)
    kills = 0
    runs = 0
    while kills < kills_wanted:
        runs += 1
        proc = project.popen("run", "--once")
        time.sleep(rng.uniform(0.05, 1.0))
        if proc.poll() is not None:
            proc.communicate()
            if proc.returncode == 0:
                break  # the backlog was finished before this kill could land
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
    final = project.ralph("run", "--once", timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]

    commits = collections.Counter(task for task, _attempt in project.task_commits())
    expected = {f"t{n:02d}" for n in range(1, tasks + 1)}
    doubled = sorted(task for task, count in commits.items() if count > 1)
    lost = sorted(expected - set(commits))
    unchecked = _commits_failing_the_check(project)
    time.sleep(0.2)
    orphans = agent_leftovers(project.root)
    memory = (project.root / "AGENTS.md").read_text()
    lessons = [memory.count(f"Lesson number {n} from") for n in range(1, tasks + 1)]
    figures = {
        "workers": workers,
        "kills": kills,
        "runs": runs + 1,
        "tasks": tasks,
        "lost": len(lost),
        "doubled": len(doubled),
        "orphans": len(orphans),
        "unchecked_commits": len(unchecked),
    }
    print("fault-injection figures:", json.dumps(figures))

    assert kills >= min(kills_wanted, 20) or commits.keys() == expected
    assert lost == [] and doubled == [] and unchecked == []
    assert orphans == []
    assert project.git("status", "--porcelain") == ""
    assert all(project.current_attempt(n) is None for n in range(workers))
    assert "prunable" not in project.git("worktree", "list", "--porcelain")
    assert lessons == [1] * tasks
    assert len(existing_learnings(project.root / "AGENTS.md")) == tasks


def _commits_failing_the_check(project: Project) -> list[str]:
    """Task commits whose tree would not pass the check (there must be none)."""
    bad = []
    shas = project.git("log", "--format=%H", "--grep=^Ralph-Task:").split()
    for sha in shas:
        names = project.git("ls-tree", "-r", "--name-only", sha, "tasks/").split()
        for name in names:
            content = subprocess.run(
                ["git", "show", f"{sha}:{name}"], cwd=project.root, capture_output=True, text=True
            ).stdout
            if content != "ok":
                bad.append(f"{sha[:10]}:{name}")
    return bad


def test_agent_dies_with_a_sigkilled_ralph(project: Project) -> None:
    """When ralph is SIGKILLed, its agent gets the parent-death signal and stops at once."""
    project.spec("slow")
    project.attempts("slow", {"steps": [{"write": "x.txt", "content": "x\n"}, {"sleep": 60}]})
    project.commit()
    proc = project.popen("run", "--once")
    deadline = time.monotonic() + 20
    pgid = None
    while pgid is None and time.monotonic() < deadline:
        pgid = (project.current_attempt() or {}).get("pgid")
        time.sleep(0.05)
    assert pgid is not None, "the attempt never recorded its agent"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 5
    while agent_leftovers(project.root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent_leftovers(project.root) == []
