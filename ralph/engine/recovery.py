"""Starting again after a ralph was killed (SIGKILL, power loss) in the middle of its work.

For each worker that was in an attempt (its record in ``<git dir>/ralph/workers/``): every
process the attempt started is stopped (its cgroup, the processes seen in its tree, anything
carrying its prompt file in its environment), ``.git`` and refs are put back as they were
before its agent ran, its changes are kept as ``interrupted.diff``, its learnings are kept,
the attempt counts as used, and the worktree goes back to the branch's tip.

A landing cut short (``landing.json``) is finished or undone first, so the branch, the
user's index and their files agree again. Recovery never moves the branch backwards: the
only branch move it makes is undoing an agent's, and a landing's compare-and-swap.

An older ralph, which ran agents in the user's tree, left ``.ralph/current.json``: its
leftovers are stopped and the tree's changes kept as a diff; the branch is left alone.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import structlog
from anyio import to_thread

from ralph.backlog.state import AttemptIntent, legacy_intent
from ralph.engine import guard
from ralph.engine.attempt import DIFF_CAP, commit_learnings_only
from ralph.engine.landing import MergeQueue
from ralph.engine.worker import Run, Worker
from ralph.errors import RepositoryError
from ralph.memory.learnings import take_learnings
from ralph.runtime import cgroups
from ralph.runtime.processes import kill_now, processes_with_env, start_time
from ralph.vcs import land, repo, trees

log = structlog.get_logger("ralph")


async def recover(run: Run) -> None:
    """Resolve whatever a killed ralph left behind: a landing, then each worker's attempt."""
    await to_thread.run_sync(_finish_landing, run)
    for intent in await to_thread.run_sync(run.state.interrupted_attempts):
        await _recover_attempt(run, intent)
    await _recover_legacy(run)


def _finish_landing(run: Run) -> None:
    record = run.state.interrupted_landing()
    if record is None:
        return
    try:
        plan = land.Landing(
            Path(record["worktree"]) if record.get("worktree") else None,
            Path(record["index"]) if record.get("index") else None,
            Path(record["scratch_index"]) if record.get("scratch_index") else None,
        )
        done = land.finish_interrupted(
            run.git, str(record["branch"]), str(record["old"]), str(record["new"]), plan
        )
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("ralph.landing_record_unusable", error=str(exc))
        done = "nothing to do"
    log.warning("ralph.landing_recovered", task=record.get("task"), action=done)
    run.state.end_landing()


async def _recover_attempt(run: Run, intent: AttemptIntent) -> None:
    if intent.branch != run.branch:
        raise RepositoryError(
            f"ralph was killed during an attempt on branch {intent.branch}, but "
            f"{run.branch} is checked out; check out {intent.branch} and start ralph "
            "again so it can clean up there"
        )
    worker = Worker(run, intent.worker)
    with structlog.contextvars.bound_contextvars(task=intent.task_id, attempt=intent.attempt):
        log.warning("ralph.recovering", start_commit=intent.start_commit[:12], worker=worker.name)
        await to_thread.run_sync(_stop_leftovers, intent)
        attempt_dir = _attempt_dir(run, intent)
        await to_thread.run_sync(_restore_git, worker, intent.start_commit)
        changes = await to_thread.run_sync(_keep_changes, worker, intent, attempt_dir)
        day = datetime.now(UTC).date().isoformat()
        learnings = tuple(
            await to_thread.run_sync(
                take_learnings,
                run.root,
                run.settings,
                attempt_dir / "learnings.md",
                intent.task_id,
                day,
            )
        )
        done = intent.task_id in await to_thread.run_sync(run.target.done)
        if not done:
            await to_thread.run_sync(_count_the_attempt, run, intent)
        await commit_learnings_only(worker, MergeQueue(), intent.task_id, intent.attempt, learnings)
        tip = await to_thread.run_sync(run.target.tip)
        await to_thread.run_sync(trees.prepare_worktree, run.git, worker.worktree, tip)
        run.events.emit(
            "attempt_recovered",
            task=intent.task_id,
            attempt=intent.attempt,
            worker=intent.worker,
            kept_commit=None,
            changes=changes,
        )
        await to_thread.run_sync(run.state.end_attempt, intent.worker)


def _stop_leftovers(intent: AttemptIntent) -> None:
    """SIGKILL every process the killed ralph's attempt started, wherever it went."""
    killed: list[int] = []
    if intent.cgroup:
        folder = Path(intent.cgroup)
        if folder.is_dir() and folder.name.startswith("w"):
            killed += cgroups.members(folder)
            cgroups.remove(folder)
    for pid, started in intent.processes:
        if start_time(pid) == started and pid != os.getpid():
            killed.append(pid)
            kill_now([pid])
    marker = f"RALPH_PROMPT_FILE={Path(intent.attempt_dir) / 'prompt.md'}".encode()
    leftovers = processes_with_env(marker)
    kill_now(leftovers)
    killed += leftovers
    if killed:
        log.warning("ralph.leftover_agent_killed", pids=sorted(set(killed)))


def _attempt_dir(run: Run, intent: AttemptIntent) -> Path:
    """The attempt's folder as recorded, if it is one of ralph's under .ralph/attempts."""
    attempts = (run.ralph_dir / "attempts").resolve()
    recorded = Path(intent.attempt_dir)
    try:
        inside = recorded.resolve().is_relative_to(attempts)
    except OSError:
        inside = False
    folder = recorded if inside else attempts / "recovered" / f"{intent.attempt}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _restore_git(worker: Worker, start: str) -> None:
    """Put back .git's guarded files and refs as they were before the agent ran."""
    saved = guard.load(worker.scratch / guard.BASELINE)
    if saved is None:
        return
    git_files, refs = saved
    common = Path(
        worker.run.git.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip()
    )
    tree = trees.worktree_git(worker.run.git, worker.worktree)
    tampered = guard.restore(common, git_files, tree.git_dir)
    if tampered:
        log.warning("ralph.git_restored", files=tampered)
    known = tree.git_dir is not None and worker.worktree.is_dir()
    agent_commits = guard.worktree_commits(tree, start) if known else set()
    moved = guard.restore_refs(worker.run.git, refs, worker.run.branch, agent_commits)
    if moved:
        log.warning("ralph.refs_restored", refs=moved[:10])


def _keep_changes(worker: Worker, intent: AttemptIntent, attempt_dir: Path) -> int:
    """The worktree's changes against the attempt's start, as interrupted.diff."""
    if not worker.worktree.is_dir():
        return 0
    tree = trees.worktree_git(worker.run.git, worker.worktree)
    if tree.git_dir is None:
        return 0  # git has no record of it: nothing of the agent's to read safely
    trees.repair_dot_git(worker.worktree, tree.git_dir)
    try:
        agent_tree = trees.tree_of_worktree(
            tree, worker.scratch / "base.index", worker.scratch / "recovered.index"
        )
        entries = trees.entries(worker.run.git, intent.start_commit, agent_tree)
        if entries:
            diff = attempt_dir / "interrupted.diff"
            trees.save_diff(worker.run.git, intent.start_commit, agent_tree, diff, DIFF_CAP)
            log.warning(
                "ralph.interrupted_changes_kept",
                diff=str(diff),
                files=len(entries),
                detail="`git apply` the diff to bring them back",
            )
        return len(entries)
    except RepositoryError as exc:  # a worktree the agent broke: nothing to read, rebuilt below
        log.warning("ralph.worktree_unreadable", worktree=str(worker.worktree), error=str(exc))
        return 0


def _count_the_attempt(run: Run, intent: AttemptIntent) -> None:
    """The interrupted attempt was used: the task's next attempt is the one after it."""
    task = run.backlog().get(intent.task_id)
    if task is not None and task.spec is not None:
        summary = "ralph was killed during this attempt; its changes were rolled back."
        run.state.record_attempt(task.id, task.spec.digest, intent.attempt, summary)


# --- an older ralph -------------------------------------------------------------------------------


async def _recover_legacy(run: Run) -> None:
    raw = legacy_intent(run.ralph_dir)
    if raw is None:
        return
    branch = raw.get("branch")
    if isinstance(branch, str) and branch != run.branch:
        raise RepositoryError(
            f"ralph was killed during an attempt on branch {branch}, but "
            f"{run.branch} is checked out; check out {branch} and start ralph "
            "again so it can clean up there"
        )
    prompt = Path(str(raw.get("attempt_dir", ""))) / "prompt.md"
    leftovers = processes_with_env(f"RALPH_PROMPT_FILE={prompt}".encode())
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    folder = run.ralph_dir / "attempts" / "recovered-from-an-older-ralph"
    folder.mkdir(parents=True, exist_ok=True)
    specs = run.settings.specs_dir.as_posix()
    dirty = await to_thread.run_sync(trees.dirty_paths, run.git)
    outside = [path for path in dirty if not path.startswith(f"{specs}/")]
    if outside:
        # The record is a file an agent could have written, so it decides nothing that
        # touches the tree: the changes are copied into a diff and left where they are. The
        # check for uncommitted changes that follows names them; the person decides.
        diff = folder / "interrupted.diff"
        await to_thread.run_sync(repo.save_worktree_diff, run.root, diff, specs)
        log.warning(
            "ralph.interrupted_changes_kept",
            diff=str(diff),
            files=len(outside),
            detail="an older ralph was killed during an attempt; its changes are still in "
            "the tree (commit, stash or discard them) and copied into the diff",
        )
    task_id = raw.get("task_id")
    attempt = raw.get("attempt")
    if isinstance(task_id, str) and isinstance(attempt, int) and attempt > 0:
        done = task_id in run.target.done()
        task = (await to_thread.run_sync(run.backlog)).get(task_id)
        if task is not None and task.spec is not None and not done:
            summary = "ralph was killed during this attempt; its changes were rolled back."
            run.state.record_attempt(task.id, task.spec.digest, attempt, summary)
    (run.ralph_dir / "current.json").unlink(missing_ok=True)
    log.warning("ralph.recovered_older_ralph", task=task_id)
