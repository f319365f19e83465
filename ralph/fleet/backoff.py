"""Waiting for PostgreSQL to come back: backoff on ``QueueUnavailable`` only, said out loud."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from ralph.fleet.errors import QueueUnavailable

log = structlog.get_logger("ralph")

OnWait = Callable[[QueueUnavailable, float, int], None]
"""Told before each wait: the error, the seconds about to be waited, the try that failed."""


def retrying(
    *,
    on_wait: OnWait | None = None,
    first_wait: float = 1.0,
    max_wait: float = 60.0,
    give_up_after: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncRetrying:
    """Retry a block while the queue is unavailable: waits start at ``first_wait`` and double
    up to ``max_wait`` (plus up to ``first_wait`` of jitter), forever or until
    ``give_up_after`` seconds, when the last ``QueueUnavailable`` is raised. Every wait is
    logged (``ralph.queue_waiting``) and passed to ``on_wait``; any other exception goes
    straight through::

        async for attempt in retrying(on_wait=notify):
            with attempt:
                await queue.open()
    """

    def announce(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if not isinstance(error, QueueUnavailable):
            return
        seconds = state.upcoming_sleep
        log.warning(
            "ralph.queue_waiting",
            error=str(error),
            retry_in_s=round(seconds, 1),
            tries=state.attempt_number,
        )
        if on_wait is not None:
            on_wait(error, seconds, state.attempt_number)

    return AsyncRetrying(
        retry=retry_if_exception_type(QueueUnavailable),
        # jitter, so a fleet that lost PostgreSQL together doesn't come back in step
        wait=wait_exponential(multiplier=first_wait, max=max_wait) + wait_random(0, first_wait),
        stop=stop_never if give_up_after is None else stop_after_delay(give_up_after),
        before_sleep=announce,
        sleep=sleep,
        reraise=True,
    )
