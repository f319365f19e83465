"""The merge queue: passed changes land on the work branch one at a time.

A change was checked on the commit its attempt started from. If the branch is still there,
that exact tree is committed. If it moved (another worker landed first, a person committed),
the change is replayed onto the tip and the checks run again on the combined tree before the
commit: what lands has always passed the checks as it lands. A conflict, or a person's
uncommitted work in the way, fails the attempt as ``conflict``; a failed re-check as
``check_failed``.

Learnings travel beside the change, not inside it: wherever the change lands, they are
merged into the memory file as it is there, so learnings of parallel tasks never conflict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import structlog
from anyio import to_thread

from ralph.engine.gate import Verdict
from ralph.engine.integration import Published
from ralph.engine.worker import Run, Worker
from ralph.memory import file as memory
from ralph.outcome import Reason
from ralph.vcs import trees

log = structlog.get_logger("ralph")

MAX_ROUNDS = 5


@dataclass(frozen=True)
class Change:
    """A change to land: made on ``base``; ``tree`` is base plus the agent's change."""

    task_id: str
    base: str
    tree: str
    learnings: tuple[str, ...] = ()
    checked: bool = False
    """False for a commit of learnings alone, which needs no checks."""


@dataclass(frozen=True)
class Landed:
    """What landed: the commit, the learnings it added, and the seconds spent re-checking."""

    commit: str | None
    """None: the task was already on the branch, nothing committed twice."""
    added: tuple[memory.Learning, ...] = ()
    recheck_seconds: float = 0.0


Recheck = Callable[[str], Awaitable[tuple[Verdict | None, float]]]
"""Check a commit (checked out in the worker's worktree): a verdict and the seconds it took."""
Message = Callable[[float], str]
"""The commit message, given the seconds spent re-checking."""


class MergeQueue:
    """One change at a time onto the work branch; shared by every worker of a run."""

    def __init__(self) -> None:
        self._lock = anyio.Lock()

    async def land(
        self, worker: Worker, change: Change, message: Message, recheck: Recheck
    ) -> Landed | Verdict:
        """Put ``change`` on the branch, re-checked if the branch moved; or say why not."""
        async with self._lock:
            return await _land(worker, change, message, recheck)


async def _land(
    worker: Worker, change: Change, message: Message, recheck: Recheck
) -> Landed | Verdict:
    run = worker.run
    spent = 0.0
    target = run.target
    for _round in range(MAX_ROUNDS):
        tip = await to_thread.run_sync(target.tip)
        if change.checked and change.task_id in await to_thread.run_sync(target.done):
            return Landed(None)
        built = await to_thread.run_sync(_on_tip, run, change, tip)
        if isinstance(built, Verdict):
            return built
        tree, added = built
        if not change.checked and not added:
            return Landed(None)  # every learning was known already: no empty commit
        if tip != change.base and change.checked:
            provisional = await to_thread.run_sync(
                trees.commit_tree, run.git, tree, [tip], f"ralph: re-check {change.task_id}\n"
            )
            worker.run.events.emit(
                "recheck_started", task=change.task_id, worker=worker.number, tip=tip
            )
            verdict, seconds = await recheck(provisional)
            spent += seconds
            run.events.emit(
                "rechecked",
                task=change.task_id,
                worker=worker.number,
                passed=verdict is None,
                duration_s=round(seconds, 3),
            )
            if verdict is not None:
                return verdict
        commit = await to_thread.run_sync(trees.commit_tree, run.git, tree, [tip], message(spent))
        result = await to_thread.run_sync(target.publish, change.task_id, tip, commit)
        if isinstance(result, Published):
            return Landed(commit, tuple(added), spent)
        if not result.moved and run.stop.is_requested:
            return Verdict(Reason.INTERRUPTED, "ralph was asked to stop while it waited to land.")
        if not result.moved:
            return Verdict(
                Reason.CONFLICT,
                "The change passed, but uncommitted work in the work tree is in its way "
                f"(nothing of it was touched): {result.detail}",
            )
        log.info("ralph.branch_moved_while_landing", task=change.task_id, tip=tip[:12])
    return Verdict(Reason.CONFLICT, "The branch kept moving while ralph tried to land the change.")


def _on_tip(run: Run, change: Change, tip: str) -> tuple[str, list[memory.Learning]] | Verdict:
    """The tree to commit on ``tip``: the change (replayed when tip isn't its base) with the
    learnings merged into the memory file as it is on tip."""
    tree = change.tree
    if tip != change.base:
        agent_commit = trees.commit_tree(run.git, change.tree, [change.base], "ralph: replay\n")
        replayed = trees.replay(run.git, change.base, agent_commit, tip)
        if replayed is None:
            return Verdict(
                Reason.CONFLICT,
                f"The change conflicts with what landed on {run.branch} since the attempt "
                "started; the next attempt starts from there.",
            )
        tree = replayed
    return _with_learnings(run, tree, change)


def _with_learnings(run: Run, tree: str, change: Change) -> tuple[str, list[memory.Learning]]:
    if not change.learnings or run.settings.learnings != "auto":
        return tree, []
    path = run.settings.memory_file.as_posix()
    current = trees.file_at(run.git, tree, path) or b""
    day = datetime.now(UTC).date().isoformat()
    updated, added = memory.add_into(
        current,
        list(change.learnings),
        change.task_id,
        day,
        limit=run.settings.max_learnings_per_attempt,
    )
    if updated is None:
        return tree, []
    index = run.state.dir / "scratch" / f"memory-{change.task_id.replace('/', '_')}.index"
    index.parent.mkdir(parents=True, exist_ok=True)
    return trees.with_file(run.git, tree, path, updated, index), added
