"""The engine in-process: one attempt and the loop, with a real repository and the scripted
agent, so a failure points at a function rather than at a subprocess's exit code."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest
from conftest import Project

from ralph.agents import make_agent
from ralph.backlog.state import StateStore
from ralph.engine import loop
from ralph.engine.attempt import AttemptOutcome, run_attempt
from ralph.engine.landing import MergeQueue
from ralph.engine.ledger import RunOptions
from ralph.engine.worker import Run, Worker
from ralph.observe.telemetry import EventLog
from ralph.outcome import Reason
from ralph.runtime.processes import Stop
from ralph.settings import load_settings
from ralph.vcs import repo
from ralph.vcs.gitenv import Git, GitEnv, records_dir


def make_run(project: Project) -> Run:
    """A Run for the project, built as ``ralph run`` builds it, without the CLI."""
    project.commit("settings")  # writes ralph.toml from project.settings
    settings = load_settings(project.root, environ={})
    repo.ensure_excluded(project.root)
    records = records_dir(project.root, os.environ)
    git_env = GitEnv.snapshot(project.root, dict(os.environ), records / "runs" / "test")
    return Run(
        root=project.root,
        settings=settings,
        agent=make_agent(settings, project.root),
        env=dict(os.environ),
        events=EventLog(project.root / ".ralph" / "events.jsonl", "test-run"),
        state=StateStore(records),
        stop=Stop(),
        branch="main",
        git=Git(project.root, git_env),
    )


def make_worker(project: Project) -> Worker:
    """Worker 0 of a fresh Run for the project."""
    return Worker(make_run(project), 0)


def attempt(worker: Worker, task_id: str, number: int = 1) -> AttemptOutcome:
    """Run one attempt of ``task_id`` in-process."""
    task = worker.run.backlog().get(task_id)
    assert task is not None and task.spec is not None
    spec = task.spec

    async def main() -> AttemptOutcome:
        return await run_attempt(worker, MergeQueue(), spec, number)

    return anyio.run(main)


def write_step(path: str, content: str = "x\n") -> dict[str, Any]:
    return {"write": path, "content": content}


def test_a_passing_attempt_commits_once_with_its_trailers(project: Project) -> None:
    """An attempt whose checks pass ends COMMITTED with the commit on the branch."""
    project.spec("one")
    project.attempts("one", {"steps": [write_step("one.txt")]})
    worker = make_worker(project)
    outcome = attempt(worker, "one")
    assert outcome.reason is Reason.COMMITTED and outcome.verdict is None
    assert outcome.commit == project.head()
    assert project.task_commits() == [("one", "1")]


def test_a_failing_check_is_named_in_the_verdict(project: Project) -> None:
    """A failed check ends CHECK_FAILED with the check's command, exit code and log file."""
    project.spec("one")
    project.attempts("one", {"steps": [write_step("one.txt")]})
    project.configure(checks=["true", "exit 3"])
    worker = make_worker(project)
    start = project.head()
    outcome = attempt(worker, "one")
    assert outcome.reason is Reason.CHECK_FAILED
    assert outcome.verdict is not None and outcome.verdict.check is not None
    check = outcome.verdict.check
    assert (check.command, check.exit_code) == ("exit 3", 3)
    assert check.log_path.name == "check-2.log" and check.log_path.is_file()
    assert project.head() == start
    assert not (project.root / "one.txt").exists()


@pytest.mark.parametrize(
    ("steps", "exit_code", "reason"),
    [
        ([write_step("specs/one.md", "# hijacked\n")], 0, Reason.PROTECTED),
        ([], 0, Reason.NO_CHANGES),
        ([write_step("one.txt")], 7, Reason.CRASH),
        (
            [
                write_step("one.txt"),
                {"run": 'touch "$(git rev-parse --git-common-dir)/hooks/pre-commit"'},
            ],
            0,
            Reason.GIT_TAMPERED,
        ),
    ],
    ids=["protected", "no-changes", "crash", "git-tampered"],
)
def test_the_gate_names_how_an_attempt_failed(
    project: Project, steps: list[dict[str, Any]], exit_code: int, reason: Reason
) -> None:
    """Each way the gate refuses a change is its own Reason, and the tree goes back."""
    project.spec("one")
    project.attempts("one", {"steps": steps, "exit": exit_code})
    worker = make_worker(project)
    start = project.head()
    outcome = attempt(worker, "one")
    assert outcome.reason is reason
    assert outcome.verdict is not None and outcome.verdict.reason is reason
    assert project.head() == start
    assert project.git("status", "--porcelain") == ""


def test_a_stop_before_the_agent_ends_interrupts_the_attempt(project: Project) -> None:
    """A stop requested while the agent runs ends the attempt INTERRUPTED, which doesn't count."""
    project.spec("one")
    project.attempts("one", {"steps": [write_step("one.txt"), {"sleep": 30}]})
    worker = make_worker(project)
    spec = worker.run.backlog().get("one")
    assert spec is not None and spec.spec is not None
    the_spec = spec.spec

    async def main() -> AttemptOutcome:
        async with anyio.create_task_group() as group:

            async def stop_soon() -> None:
                await anyio.sleep(0.5)
                worker.run.stop.request("SIGTERM")

            group.start_soon(stop_soon)
            return await run_attempt(worker, MergeQueue(), the_spec, 1)

    outcome = anyio.run(main)
    assert outcome.reason is Reason.INTERRUPTED and not outcome.reason.counts
    assert not (project.root / "one.txt").exists()


def test_the_loop_runs_the_backlog_in_dependency_order(project: Project) -> None:
    """loop.run with --once does every task once, dependencies first, and returns 0."""
    project.spec("b", depends_on=["a"], priority=1)
    project.spec("a", priority=2)
    for task_id in ("a", "b"):
        project.attempts(task_id, {"steps": [write_step(f"{task_id}.txt")]})
    the_run = make_run(project)

    async def main() -> int:
        return await loop.run(the_run, RunOptions(once=True))

    assert anyio.run(main) == 0
    assert project.task_commits() == [("a", "1"), ("b", "1")]


def test_the_loop_marks_a_task_failed_after_its_attempts(project: Project) -> None:
    """A task that fails every attempt ends failed with its last reason; the run returns 1."""
    project.spec("one", max_attempts=2)
    project.attempts("one", {"steps": [write_step("one.txt")], "exit": 1})
    the_run = make_run(project)

    async def main() -> int:
        return await loop.run(the_run, RunOptions(once=True))

    assert anyio.run(main) == 1
    task = the_run.backlog().get("one")
    assert task is not None
    assert (task.state.value, task.attempts, task.last_reason) == ("failed", 2, Reason.CRASH)


def test_only_nobodys_fault_endings_leave_the_attempt_unused() -> None:
    """Reasons that don't use up an attempt are exactly the stop, auth, a conflict in the
    merge queue and the transient ones."""
    uncounted = {reason for reason in Reason if not reason.counts}
    assert uncounted == {
        Reason.INTERRUPTED,
        Reason.AUTH,
        Reason.CONFLICT,
        Reason.USAGE_LIMIT,
        Reason.API_OUTAGE,
    }
