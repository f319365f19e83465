"""Cleaning up after a ralph that was killed in the middle of an attempt.

The attempt's intent record (``.ralph/current.json``) says which task, attempt and
starting commit it was. Its agent is stopped, its changes are kept as a diff, the tree
goes back to where the attempt started (or to ralph's own commit, if it got that far),
its learnings are kept, and the attempt counts as used.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from anyio import to_thread

from ralph.backlog.state import AttemptIntent
from ralph.engine import guard
from ralph.engine.attempt import commit_learnings_only
from ralph.engine.worker import Worker
from ralph.errors import RepositoryError
from ralph.memory.file import read_learnings_file
from ralph.runtime.processes import kill_now, processes_with_env
from ralph.vcs import repo

log = structlog.get_logger("ralph")


async def recover_interrupted_attempt(worker: Worker) -> None:
    """Resolve the attempt a killed ralph left behind, if there is one."""
    intent = worker.state.interrupted_attempt()
    if intent is None:
        return
    if intent.branch != worker.branch:
        raise RepositoryError(
            f"ralph was killed during an attempt on branch {intent.branch}, but "
            f"{worker.branch} is checked out; check out {intent.branch} and start ralph "
            "again so it can clean up there"
        )
    with structlog.contextvars.bound_contextvars(task=intent.task_id, attempt=intent.attempt):
        log.warning("ralph.recovering", start_commit=intent.start_commit[:12])
        _stop_leftover_agent(intent)
        committed = await to_thread.run_sync(_committed_by_ralph, worker.root, intent)
        base = committed or intent.start_commit
        attempt_dir = Path(intent.attempt_dir)
        await to_thread.run_sync(_note_moved_tip, worker, base, attempt_dir)
        await to_thread.run_sync(guard.fold_head, worker, intent.task_id, base)
        await to_thread.run_sync(guard.undo_behind_git, worker, base, attempt_dir)
        specs = worker.settings.specs_dir.as_posix()
        changes = await to_thread.run_sync(repo.stage_changes, worker.root, base, specs)
        if changes:
            diff = attempt_dir / "interrupted.diff"
            await to_thread.run_sync(repo.save_diff, worker.root, base, diff)
            log.warning(
                "ralph.interrupted_changes_kept",
                diff=str(diff),
                files=len(changes),
                detail="`git apply` the diff to bring them back",
            )
        await to_thread.run_sync(guard.reset_tree, worker, base)
        learnings = await to_thread.run_sync(read_learnings_file, attempt_dir / "learnings.md")
        await commit_learnings_only(worker, intent.task_id, intent.attempt, learnings)
        if committed is None:
            await to_thread.run_sync(_count_the_attempt, worker, intent)
        worker.events.emit(
            "attempt_recovered",
            task=intent.task_id,
            attempt=intent.attempt,
            kept_commit=committed,
            changes=len(changes),
        )
        await to_thread.run_sync(worker.state.end_attempt)


def _note_moved_tip(worker: Worker, base: str, attempt_dir: Path) -> None:
    """Keep the branch tip ralph is about to fold back (the agent's commits, or a person's
    made after the kill) where it can be found: its id in the attempt folder and the log."""
    tip = repo.head_commit(worker.root)
    if tip != base:
        (attempt_dir / "branch-tip-before-recovery").write_text(tip + "\n")
        log.warning(
            "ralph.branch_tip_folded",
            tip=tip,
            detail=f"commits after the attempt's start are folded into its rolled-back change; "
            f"`git branch rescued {tip[:12]}` brings them back",
        )


def _stop_leftover_agent(intent: AttemptIntent) -> None:
    """SIGKILL every process the killed ralph's attempt started, wherever it went.

    Each carries the attempt's RALPH_PROMPT_FILE in its environment: that finds the
    agent's group and daemons that left it, and never an unrelated process that
    happens to reuse the recorded process group id.
    """
    marker = f"RALPH_PROMPT_FILE={Path(intent.attempt_dir) / 'prompt.md'}".encode()
    leftovers = processes_with_env(marker)
    if leftovers:
        log.warning("ralph.leftover_agent_killed", pids=leftovers)
        kill_now(leftovers)


def _committed_by_ralph(root: Path, intent: AttemptIntent) -> str | None:
    """ralph's own commit for this attempt, if it was made before the kill."""
    if intent.phase != "committing":
        return None
    return repo.task_commit_on(root, intent.branch, intent.task_id, intent.start_commit)


def _count_the_attempt(worker: Worker, intent: AttemptIntent) -> None:
    """The interrupted attempt was used: the task's next attempt is the one after it."""
    task = worker.backlog().get(intent.task_id)
    if task is not None and task.spec is not None:
        summary = "ralph was killed during this attempt; its changes were rolled back."
        worker.state.record_attempt(task.id, task.spec.digest, intent.attempt, summary)
