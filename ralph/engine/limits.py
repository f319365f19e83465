"""Usage limits and model outages: waited out, never counted against the task.

The same attempt (same number) runs again once the limit resets, when the CLI says when,
or after a backoff; bounded by retry_max_wait, and a stop request ends the wait at once.
"""

from __future__ import annotations

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
from ralph.engine.worker import Worker
from ralph.errors import RalphError
from ralph.outcome import TRANSIENT, Reason

log = structlog.get_logger("ralph")

RETRY_TRIES = 12
RESET_MARGIN = 5.0
MAX_SINGLE_WAIT = 3600.0


class LimitTooFar(RalphError):
    """A usage limit resets later than ralph is willing to wait."""


async def attempt_through_limits(
    worker: Worker, spec: Spec, number: int
) -> tuple[AttemptOutcome, float]:
    """Attempt ``number`` of ``spec``, run again while the model API is limited or down.

    Returns the last outcome and what all the runs cost.
    """
    spent = 0.0
    outcome = AttemptOutcome(Reason.INTERRUPTED)
    retrying = AsyncRetrying(
        retry=retry_if_result(lambda o: o.reason in TRANSIENT and not worker.stop.is_requested),
        stop=stop_after_attempt(RETRY_TRIES) | stop_after_delay(worker.settings.retry_max_wait),
        wait=lambda state: _wait_seconds(worker, state),
        before_sleep=lambda state: _announce_wait(worker, state),
        sleep=lambda seconds: _sleep_unless_stopped(worker, seconds),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    async for trying in retrying:
        if trying.retry_state.attempt_number > 1 and worker.stop.is_requested:
            break  # the wait was cut short by a stop: start no new agent
        with trying:
            outcome = await run_attempt(worker, spec, number)
            spent += outcome.report.cost_usd or 0.0
        if trying.retry_state.outcome is not None and not trying.retry_state.outcome.failed:
            trying.retry_state.set_result(outcome)
    return outcome, spent


def _last(state: RetryCallState) -> AttemptOutcome:
    if state.outcome is None:
        return AttemptOutcome(Reason.INTERRUPTED)
    outcome: AttemptOutcome = state.outcome.result()
    return outcome


def _wait_seconds(worker: Worker, state: RetryCallState) -> float:
    """Until the limit resets when that is known, else backing off from retry_backoff."""
    settings = worker.settings
    verdict = _last(state).verdict
    retry_at = verdict.retry_at if verdict else None
    if retry_at is not None:
        seconds = (retry_at - datetime.now(UTC)).total_seconds() + RESET_MARGIN
        if seconds > settings.retry_max_wait:
            raise LimitTooFar(
                f"the {worker.agent.name} agent's usage limit resets at "
                f"{retry_at.isoformat(timespec='minutes')}, later than retry_max_wait "
                f"allows; stopping. Run ralph again after the reset."
            )
    else:
        seconds = settings.retry_backoff * 2 ** (state.attempt_number - 1)
    return float(max(0.0, min(seconds, MAX_SINGLE_WAIT, settings.retry_max_wait)))


def _announce_wait(worker: Worker, state: RetryCallState) -> None:
    """Say what ralph waits for and until when; only called when it really waits."""
    reason = _last(state).reason.value
    seconds = state.upcoming_sleep
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    worker.events.emit("waiting", reason=reason, seconds=round(seconds, 1), until=until.isoformat())
    log.warning("ralph.waiting", reason=reason, until=until.isoformat(timespec="seconds"))
    worker.notify.status(f"waiting for {reason} until {until.isoformat(timespec='seconds')}")


async def _sleep_unless_stopped(worker: Worker, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await worker.stop.requested.wait()
