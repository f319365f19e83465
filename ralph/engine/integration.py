"""Where passed changes land: the local work branch, or (with a queue of many machines) the
remote's copy of it. The merge queue asks an Integration for the tip, the done tasks, and to
publish a commit made on that tip."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from ralph.backlog.state import StateStore
from ralph.observe.telemetry import EventLog
from ralph.runtime.processes import Stop
from ralph.vcs import land, remote
from ralph.vcs.gitenv import Git
from ralph.vcs.history import DoneTasks, branch_tip, is_ancestor

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class Published:
    """The commit is now the integration point's tip."""

    commit: str


@dataclass(frozen=True)
class NotPublished:
    """``moved``: the tip moved meanwhile (replay onto the new one and try again); else
    something in the way that a new attempt must get around (``detail`` says what)."""

    moved: bool
    detail: str


class Integration(Protocol):
    """The branch passed changes land on. Blocking methods: call them in a thread."""

    def tip(self) -> str:
        """The commit changes land on now (fetched first, for a remote)."""
        ...

    def done(self) -> set[str]:
        """Task ids committed in the tip's history."""
        ...

    def publish(self, task_id: str, old: str, new: str) -> Published | NotPublished:
        """Make ``new`` (a commit on ``old``) the tip, only if the tip is still ``old``."""
        ...


@dataclass
class LocalBranch:
    """The work branch in this clone; the user's work tree follows it (ralph.vcs.land)."""

    git: Git
    branch: str
    state: StateStore
    events: EventLog
    stop: Stop
    scratch: Path
    done_tasks: DoneTasks = field(default_factory=DoneTasks)

    def tip(self) -> str:
        return branch_tip(self.git, self.branch)

    def done(self) -> set[str]:
        return self.done_tasks.read(self.git, self.branch)

    def publish(self, task_id: str, old: str, new: str) -> Published | NotPublished:
        return _advance_local(self, task_id, old, new)


DONE_FRESH = 5.0
"""Seconds a fetch of the remote is taken as fresh for what is done there."""


@dataclass
class RemoteBranch:
    """The remote's copy of the work branch: fetched before every look, pushed to only as a
    fast-forward. The local branch follows it where it can."""

    local: LocalBranch
    remote: str
    before_push: Callable[[str], None] = lambda _task_id: None
    """Raises when the task is no longer this process's to push (its claim was lost)."""
    done_tasks: DoneTasks = field(default_factory=DoneTasks)
    fetched: tuple[str, float] | None = None
    """The remote tip this process fetched last, and when (monotonic). Kept in memory: the
    remote-tracking ref on disk is a file an agent could move."""

    def tip(self) -> str:
        sha = remote.fetch(self.local.git, self.remote, self.local.branch)
        self.fetched = (sha, time.monotonic())
        return sha

    def done(self) -> set[str]:
        """The tasks on the remote, from a fetch at most ``DONE_FRESH`` seconds old."""
        if self.fetched is None or time.monotonic() - self.fetched[1] > DONE_FRESH:
            self.tip()
        assert self.fetched is not None
        sha = self.fetched[0]
        return self.done_tasks.read_ref(self.local.git, sha) if sha else set()

    def publish(self, task_id: str, old: str, new: str) -> Published | NotPublished:
        self.before_push(task_id)
        accepted, said = remote.push(self.local.git, self.remote, self.local.branch, new)
        if not accepted:
            return NotPublished(True, f"the push was rejected: {said[-300:]}")
        mine = self.local.tip()
        if not mine or is_ancestor(self.local.git, mine, new):
            result = _advance_local(self.local, task_id, mine, new)
            if isinstance(result, NotPublished):
                log.warning("ralph.local_branch_not_updated", detail=result.detail)
        else:
            log.warning(
                "ralph.local_branch_diverged",
                branch=self.local.branch,
                detail="it has commits the remote hasn't; ralph pushed to the remote only",
            )
        return Published(new)


def _advance_local(
    local: LocalBranch, task_id: str, old: str, new: str
) -> Published | NotPublished:
    """Move the local branch with the landing on record first, so a kill mid-way can be
    finished or undone by the next start (engine.recovery)."""
    local.scratch.mkdir(parents=True, exist_ok=True)
    plan = land.plan_landing(local.git, local.branch, local.scratch)
    record = {"task": task_id, "branch": local.branch, "old": old, "new": new}
    local.state.begin_landing({**record, **plan.as_json()})

    def waiting(lock: Path) -> None:
        local.events.emit("waiting_for_git", task=task_id, lock=str(lock))
        log.warning(
            "ralph.waiting_for_git",
            lock=str(lock),
            detail="a git command of yours holds the work tree's index; ralph lands after it",
        )

    patience = land.Patience(waiting=waiting, give_up=lambda: local.stop.is_requested)
    try:
        result = land.advance(
            local.git, local.branch, old, new, plan, reason=f"ralph: {task_id}", patience=patience
        )
    finally:
        local.state.end_landing()
    if isinstance(result, land.Landed):
        return Published(result.commit)
    return NotPublished(result.moved, result.detail)
