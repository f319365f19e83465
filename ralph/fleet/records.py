"""What the shared queue hands out: frozen records, no database types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Outcome(StrEnum):
    """How a claim ends (``FleetQueue.release``)."""

    DONE = "done"
    """The task's commit is on the remote branch (landed now, or found there): no process
    queues this spec digest again."""
    FAILED = "failed"
    """The task failed for good: not queued again until its spec changes or a retry."""
    RETRY = "retry"
    """Given back: any process may take it up again (after ``delay``)."""
    DROPPED = "dropped"
    """Not runnable on the remote branch any more (spec gone or disabled, a dependency
    not done): the job ends; the task is queued again when it is offered again."""


@dataclass(frozen=True)
class Offer:
    """A task that is runnable on the remote branch, as the queue needs to know it."""

    task_id: str
    digest: str
    priority: int = 100
    """ralph's priority: lower runs first."""
    path: str = ""
    """The spec's path: the tie-break after priority, as in the local backlog."""
    touches: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """One task held by this process for one local worker slot."""

    job_id: int
    task_id: str
    digest: str
    touches: tuple[str, ...]
    worker_id: int
    requeues: int
    """How often the task's job went back to the queue before (given back or reaped)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a task now, for ``ralph status``."""

    task_id: str
    job_id: int
    host: str | None
    """None: the holder unregistered or was declared dead; the job is about to be requeued."""
    pid: int | None
    since: datetime | None
    heartbeat_age: float | None
    """Seconds since the holder's last heartbeat (None with no holder)."""
    stalled: bool
    """The holder missed heartbeats: another process will take the task over."""


@dataclass(frozen=True)
class Peer:
    """One registered ``ralph run`` process."""

    worker_id: int
    host: str
    pid: int
    slots: int
    run_id: str
    since: datetime
    heartbeat_age: float
    holding: int


@dataclass(frozen=True)
class QueueStats:
    """The queue's view for ``ralph stats``."""

    jobs: Mapping[str, int]
    """Jobs by procrastinate status: todo, doing, succeeded, failed, ..."""
    retries: int
    """Jobs that went back to the queue: given back (retry later) or reaped."""
    stalls: int
    """Jobs taken from a process declared dead."""
    peers: int


@dataclass(frozen=True)
class TaskRecord:
    """What the fleet remembers of a task: attempts, failure, spend (all processes)."""

    task_id: str
    digest: str
    attempts: int
    """Attempts at this digest, across the fleet."""
    done: bool
    """Released as done with this digest (done-ness itself lives in git)."""
    failed: bool
    reason: str
    spend_usd: float


@dataclass(frozen=True)
class Cadence:
    """How often a process beats and reaps, and when the others give its tasks away.

    A process SIGKILLed right after a heartbeat loses its tasks at most ``stall_timeout``
    later: its heartbeat is stale after ``reap_after`` and a reap runs every ``reap_every``.
    """

    stall_timeout: float
    heartbeat_every: float
    reap_every: float
    reap_after: float

    @classmethod
    def for_stall(cls, stall_timeout: float) -> Cadence:
        """Beat and reap every ``min(5 s, stall_timeout / 6)``; reap after the rest."""
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be more than 0")
        tick = min(5.0, stall_timeout / 6)
        return cls(stall_timeout, tick, tick, stall_timeout - tick)
