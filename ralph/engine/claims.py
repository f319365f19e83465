"""Who may work on which task: this process alone (``LocalClaims``), or every ``ralph run``
sharing a queue on PostgreSQL (``FleetClaims``).

The loop asks for tasks to start, tells when one ended, and counts attempts through the
claims, so with a queue a task is held by one process at a time across machines, attempts
and failures are counted for the whole fleet, and a process that loses its claim (declared
dead after missing heartbeats) pushes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import anyio
import structlog

from ralph.backlog.snapshot import Backlog
from ralph.backlog.tasks import Task
from ralph.engine import schedule
from ralph.engine.ledger import TaskOutcome

if TYPE_CHECKING:
    from ralph.fleet import Claim, FleetQueue

log = structlog.get_logger("ralph")


class Claims(Protocol):
    """How the loop gets the tasks it may start, and gives them back."""

    async def pick(self, backlog: Backlog, running: Sequence[Task], room: int) -> list[Task]:
        """Up to ``room`` tasks to start now, held for this process."""
        ...

    async def ended(self, task: Task, outcome: TaskOutcome | None) -> None:
        """``task``'s turn ended (None: an error ended it)."""
        ...

    async def attempts_used(self, task: Task) -> int:
        """Attempts of ``task`` already used (by any process, with a queue)."""
        ...

    async def counted(self, task: Task, cost_usd: float) -> None:
        """One attempt of ``task`` was used and cost ``cost_usd``."""
        ...

    async def failed(self, task: Task, reason: str) -> None:
        """``task`` used up its attempts."""
        ...

    async def spent(self) -> float | None:
        """What the agents cost so far, where the claims keep it (None: the run's ledger)."""
        ...

    def still_held(self, task_id: str) -> None:
        """Raise when ``task_id`` is no longer this process's (just before publishing)."""
        ...

    async def others_will_hand_back(self) -> bool:
        """Whether another process holds a task: it lands it, or (if that process died) it
        comes back after stall_timeout. A batch run waits rather than end with work left."""
        ...


class LocalClaims:
    """One process on one clone: the schedule decides, nothing to hold elsewhere."""

    async def pick(self, backlog: Backlog, running: Sequence[Task], room: int) -> list[Task]:
        return schedule.pick(backlog, running, room)

    async def ended(self, task: Task, outcome: TaskOutcome | None) -> None:
        return None

    async def attempts_used(self, task: Task) -> int:
        return task.attempts

    async def counted(self, task: Task, cost_usd: float) -> None:
        return None

    async def failed(self, task: Task, reason: str) -> None:
        return None

    async def spent(self) -> float | None:
        return None

    def still_held(self, task_id: str) -> None:
        return None

    async def others_will_hand_back(self) -> bool:
        return False


class FleetClaims:
    """Tasks claimed from the shared queue; attempts, failures and spend kept there."""

    def __init__(self, queue: FleetQueue) -> None:
        self.queue = queue
        self.held: dict[str, Claim] = {}
        self.unreleased: list[tuple[Task, TaskOutcome | None]] = []

    async def pick(self, backlog: Backlog, running: Sequence[Task], room: int) -> list[Task]:
        from ralph.fleet import QueueUnavailable

        try:
            for task, outcome in self.unreleased[:]:
                self.unreleased.remove((task, outcome))
                await self.ended(task, outcome)
            return await self._pick(backlog, running, room)
        except QueueUnavailable as exc:
            log.warning("ralph.queue_unavailable", error=str(exc), detail="no new task for now")
            return []

    async def _pick(self, backlog: Backlog, running: Sequence[Task], room: int) -> list[Task]:
        from ralph.fleet import Offer, Outcome

        offers = [
            Offer(task.id, task.spec.digest, task.spec.priority, task.path, task.spec.touches)
            for task in backlog
            if task.runnable and task.spec is not None
        ]
        await self.queue.offer(offers)
        busy = [touch for task in running if task.spec for touch in task.spec.touches]
        picked: list[Task] = []
        while len(picked) < room:
            started = time.monotonic()
            claim = await self.queue.claim(exclude_touches=busy)
            if claim is None:
                break
            log.info(
                "ralph.task_claimed",
                task=claim.task_id,
                claim_ms=round(1000 * (time.monotonic() - started), 1),
            )
            task = backlog.get(claim.task_id)
            if task is None or task.spec is None or task.spec.digest != claim.digest:
                await self.queue.release(claim, Outcome.DROPPED, reason="not runnable here")
                continue
            self.held[task.id] = claim
            picked.append(task)
            busy.extend(task.spec.touches)
        return picked

    async def ended(self, task: Task, outcome: TaskOutcome | None) -> None:
        from ralph.fleet import ClaimLost, Outcome, QueueUnavailable

        claim = self.held.get(task.id)
        if claim is None:
            return
        if outcome is not None and outcome.status == "done":
            result = Outcome.DONE
        elif outcome is not None and outcome.status == "failed":
            result = Outcome.FAILED
        else:
            result = Outcome.RETRY
        try:
            await self.queue.release(claim, result, reason=outcome.status if outcome else "")
        except QueueUnavailable:
            self.unreleased.append((task, outcome))  # released at the next look, or reaped
            return
        except ClaimLost:
            log.warning("ralph.claim_lost", task=task.id, detail="another process took it over")
        self.held.pop(task.id, None)

    async def attempts_used(self, task: Task) -> int:
        from ralph.fleet import QueueUnavailable

        try:
            records = await self.queue.task_records()
        except QueueUnavailable:
            return task.attempts
        record = records.get(task.id)
        if record is None or task.spec is None or record.digest != task.spec.digest:
            return 0
        return record.attempts

    async def counted(self, task: Task, cost_usd: float) -> None:
        claim = self.held.get(task.id)
        if claim is not None:
            await self.queue.record_attempt(claim)
        if cost_usd:
            await self.queue.add_spend(cost_usd, task_id=task.id)

    async def failed(self, task: Task, reason: str) -> None:
        if task.spec is not None:
            await self.queue.mark_failed(task.id, task.spec.digest, reason)

    async def spent(self) -> float | None:
        from ralph.fleet import QueueUnavailable

        try:
            return await self.queue.total_spend()
        except QueueUnavailable:
            return None

    def still_held(self, task_id: str) -> None:
        claim = self.held.get(task_id)
        if claim is not None:
            anyio.from_thread.run(self.queue.check, claim)

    async def others_will_hand_back(self) -> bool:
        from ralph.fleet import QueueUnavailable

        try:
            holders = await self.queue.holders()
        except QueueUnavailable:
            return False
        me = (self.queue.host, self.queue.pid)
        return any((holder.host, holder.pid) != me for holder in holders)
