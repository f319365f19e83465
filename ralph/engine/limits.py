"""Usage limits and model outages: waited out, never counted against the task.

The same attempt (same number) runs again once the limit resets, when the CLI says when,
or after a backoff; bounded by retry_max_wait, and a stop request ends the wait at once.
A limit is the account's, not the task's: while one worker waits, the others start no new
attempt (``Pause``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
)

from ralph.backlog.specs import Spec
from ralph.engine.attempt import AttemptOutcome, run_attempt
from ralph.engine.landing import MergeQueue
from ralph.engine.worker import Run, Worker
from ralph.errors import RalphError
from ralph.outcome import TRANSIENT, Reason

log = structlog.get_logger("ralph")

RETRY_TRIES = 12
RESET_MARGIN = 5.0
MAX_SINGLE_WAIT = 3600.0


class LimitTooFar(RalphError):
    """A usage limit resets later than ralph is willing to wait."""


TURN_POLL = 0.5
"""Seconds between looks for a stop while an attempt waits for its turn."""


class Pause:
    """When workers hold back new attempts: until a usage limit or an outage is over, and
    while an attempt that must run alone waits for its turn or runs.

    An attempt that follows a conflict runs alone: it waits until the attempts running now
    have ended (no new one starts meanwhile), and none starts until it has ended. Otherwise
    tasks that keep changing the same lines could conflict with each other until they fail.
    """

    def __init__(self) -> None:
        self.until = 0.0  # time.monotonic()
        self._turns = anyio.Condition()
        self._side_by_side = 0
        self._alone = False
        self._waiting_alone = 0

    @asynccontextmanager
    async def turn(self, run: Run, *, alone: bool = False) -> AsyncIterator[None]:
        """Hold a turn for one attempt: side by side with others, or ``alone``."""
        async with self._turns:
            if alone:
                self._waiting_alone += 1
                try:
                    await self._wait_while(run, lambda: self._alone or self._side_by_side > 0)
                finally:
                    self._waiting_alone -= 1
                self._alone = True
            else:
                await self._wait_while(run, lambda: self._alone or self._waiting_alone > 0)
                self._side_by_side += 1
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._turns:
                    if alone:
                        self._alone = False
                    else:
                        self._side_by_side -= 1
                    self._turns.notify_all()

    async def _wait_while(self, run: Run, busy: Callable[[], bool]) -> None:
        """Wait (holding the condition's lock between looks) until not ``busy`` or a stop:
        a stopped attempt ends at once, so it may as well start."""
        while busy() and not run.stop.is_requested:
            with anyio.move_on_after(TURN_POLL):
                await self._turns.wait()

    def hold(self, seconds: float) -> None:
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self, run: Run) -> None:
        """Sleep until the pause ends or a stop is requested."""
        left = self.until - time.monotonic()
        if left > 0:
            with anyio.move_on_after(left):
                await run.stop.requested.wait()


async def attempt_through_limits(
    worker: Worker,
    queue: MergeQueue,
    pause: Pause,
    spec: Spec,
    number: int,
    *,
    alone: bool = False,
) -> tuple[AttemptOutcome, float]:
    """Attempt ``number`` of ``spec``, run again while the model API is limited or down;
    ``alone``: with no other worker's attempt running beside it (after a conflict).

    Returns the last outcome and what all the runs cost.
    """
    run = worker.run
    spent = 0.0
    outcome = AttemptOutcome(Reason.INTERRUPTED)
    retrying = AsyncRetrying(
        retry=retry_if_result(lambda o: o.reason in TRANSIENT and not run.stop.is_requested),
        stop=stop_after_attempt(RETRY_TRIES) | stop_after_delay(run.settings.retry_max_wait),
        wait=lambda state: _wait_seconds(run, state),
        before_sleep=lambda state: _announce_wait(worker, pause, state),
        sleep=lambda seconds: _sleep_unless_stopped(run, seconds),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    async for trying in retrying:
        if trying.retry_state.attempt_number > 1 and run.stop.is_requested:
            break  # the wait was cut short by a stop: start no new agent
        await pause.wait(run)
        with trying:
            async with pause.turn(run, alone=alone):
                outcome = await run_attempt(worker, queue, spec, number)
            spent += outcome.report.cost_usd or 0.0
        if trying.retry_state.outcome is not None and not trying.retry_state.outcome.failed:
            trying.retry_state.set_result(outcome)
    return outcome, spent


def _last(state: RetryCallState) -> AttemptOutcome:
    if state.outcome is None:
        return AttemptOutcome(Reason.INTERRUPTED)
    outcome: AttemptOutcome = state.outcome.result()
    return outcome


def _wait_seconds(run: Run, state: RetryCallState) -> float:
    """Until the limit resets when that is known, else backing off from retry_backoff."""
    settings = run.settings
    verdict = _last(state).verdict
    retry_at = verdict.retry_at if verdict else None
    if retry_at is not None:
        seconds = (retry_at - datetime.now(UTC)).total_seconds() + RESET_MARGIN
        if seconds > settings.retry_max_wait:
            raise LimitTooFar(
                f"the {run.agent.name} agent's usage limit resets at "
                f"{retry_at.isoformat(timespec='minutes')}, later than retry_max_wait "
                f"allows; stopping. Run ralph again after the reset."
            )
    else:
        seconds = settings.retry_backoff * 2 ** (state.attempt_number - 1)
    return float(max(0.0, min(seconds, MAX_SINGLE_WAIT, settings.retry_max_wait)))


def _announce_wait(worker: Worker, pause: Pause, state: RetryCallState) -> None:
    """Say what ralph waits for and until when; hold every worker back meanwhile."""
    run = worker.run
    reason = _last(state).reason.value
    seconds = state.upcoming_sleep
    pause.hold(seconds)
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    run.events.emit(
        "waiting",
        reason=reason,
        seconds=round(seconds, 1),
        until=until.isoformat(),
        worker=worker.number,
    )
    log.warning("ralph.waiting", reason=reason, until=until.isoformat(timespec="seconds"))
    run.notify.status(f"waiting for {reason} until {until.isoformat(timespec='seconds')}")


async def _sleep_unless_stopped(run: Run, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await run.stop.requested.wait()
