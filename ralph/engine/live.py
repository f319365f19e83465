"""The agent read while it runs: the engine's half of live reading.

The preset's ``LiveReader`` turns each line of output into signals (``ralph.agents.live``);
this module acts on them for one attempt. It tells the process runner whether a line was a
sign of life (for ``agent_stall_timeout``) or means the agent must stop now (``stop_now``),
records what the CLI retries and why as ``agent_retrying`` events, and keeps the agent's
last event where ``ralph status`` and the service manager's STATUS line show it.

Everything here runs once per line of output, so it is cheap and bounded: events about
retries are capped per attempt, and the attempt record on disk is rewritten at most every
``RECORD_EVERY`` seconds, or when the kind of event changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from ralph.agents.live import MAX_LINE_BYTES, LiveReader, Signal, SignalKind, stop_now
from ralph.observe.telemetry import EventLog
from ralph.runtime.processes import Heard, OutputWatch

log = structlog.get_logger()

RETRY_EVENTS = 50
"""At most this many ``agent_retrying`` events per attempt: a CLI that loops on retries (or
an agent that prints retry notices on purpose) can't flood the event log."""
RECORD_EVERY = 5.0
"""Seconds between rewrites of the attempt record for the same kind of event; a new kind is
written at once, but never more than once a second."""

_FAILURES = (SignalKind.AUTH_FAILED, SignalKind.USAGE_LIMIT, SignalKind.API_OUTAGE)


class LiveAgent:
    """One attempt's live reading: the reader, what it heard last, and what it decided."""

    def __init__(
        self,
        reader: LiveReader,
        *,
        events: EventLog,
        where: dict[str, object],
        record: Callable[[dict[str, str]], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.reader = reader
        self._events = events
        self._where = where
        """The fields every event of this attempt carries (task, attempt, worker)."""
        self._record = record
        self._now = now
        self.last: Signal | None = None
        self.last_at: datetime | None = None
        self.halting: Signal | None = None
        """The signal ralph stopped the agent on, if it did."""
        self.retries = 0
        self._recorded: tuple[SignalKind, float] | None = None

    def watch(self, stall: float | None) -> OutputWatch:
        """The process runner's side: each line goes to ``hear``."""
        return OutputWatch(self.hear, max_line=MAX_LINE_BYTES, stall=stall)

    def hear(self, line: bytes) -> Heard:
        """What one line of the agent's output means for the run."""
        signals = self.reader.feed(line)
        if not signals:
            return "nothing"
        now = self._now()
        heard: Heard = "life"
        for signal in signals:
            self.last, self.last_at = signal, now
            if signal.kind is SignalKind.RETRYING or (
                signal.kind in _FAILURES and signal.cli_retries
            ):
                self._retrying(signal, stopping=stop_now(signal, now))
            if self.halting is None and stop_now(signal, now):
                self.halting = signal
                heard = "halt"
                self._events.emit("agent_stopped_early", **self._where, **signal.as_event())
                log.warning(
                    "ralph.agent_stopped_early",
                    signal=signal.kind.value,
                    detail=signal.detail,
                    retry_at=signal.retry_at.isoformat() if signal.retry_at else None,
                )
        self._keep()
        return heard

    def _retrying(self, signal: Signal, *, stopping: bool) -> None:
        self.retries += 1
        if self.retries > RETRY_EVENTS:
            return
        decision = "ralph stops the agent" if stopping else "left to the CLI"
        self._events.emit("agent_retrying", **self._where, decision=decision, **signal.as_event())
        log.info(
            "ralph.agent_retrying",
            signal=signal.kind.value,
            status=signal.status,
            retry=signal.retry,
            max_retries=signal.max_retries,
            decision=decision,
        )

    def _keep(self) -> None:
        """The last event into the attempt record, for ``ralph status``; not on every line."""
        assert self.last is not None
        clock = time.monotonic()
        if self._recorded is not None:
            kind, when = self._recorded
            wait = RECORD_EVERY if kind is self.last.kind else 1.0
            if clock - when < wait:
                return
        self._recorded = (self.last.kind, clock)
        self._record(self.as_record())

    def as_record(self) -> dict[str, str]:
        """``{"signal", "detail", "at"}`` of the last event; {} before the first."""
        if self.last is None or self.last_at is None:
            return {}
        return {
            "signal": self.last.kind.value,
            "detail": self.last.detail,
            "at": self.last_at.isoformat(timespec="seconds"),
        }

    def describe(self, now: datetime) -> str | None:
        """``agent: retrying (HTTP 529 overloaded), 12s ago`` for a STATUS line; None before
        the agent printed any event."""
        if self.last is None or self.last_at is None:
            return None
        age = max(0, int((now - self.last_at).total_seconds()))
        detail = f" ({self.last.detail})" if self.last.detail else ""
        return f"agent: {self.last.kind.value}{detail}, {age}s ago"
