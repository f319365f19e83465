"""Reading an agent while it runs: each line of its output, as it arrives, becomes signals.

A preset whose CLI streams structured events gives a ``LiveReader`` for each attempt. The
engine feeds it every complete line of the agent's output and acts on what comes back: it
stops the agent when ``stop_now`` says so, tells people what the CLI is retrying and why,
and takes any signal at all as a sign of life for the stall timeout.

Reading is best effort by design. A line that is not one of the CLI's events (a warning on
stderr, a stack trace, a cut-off line) is ignored, never an error, and no line costs more
than parsing ``MAX_LINE_BYTES`` of JSON. What the agent printed is judged again, whole,
after it exits (``Agent.report``); live reading only comes to the same verdict sooner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol

from ralph.agents.failures import parse_reset
from ralph.outcome import Reason

MAX_LINE_BYTES = 64 * 1024
"""Longest line parsed as JSON. Retries, limits and errors are a few hundred bytes to a few
KiB; only a model's long message or a tool's large output is longer, and those are read as
a sign of life without being parsed. The engine may hand over just the first
``MAX_LINE_BYTES + 1`` bytes of a longer line: it is read the same way."""
PLAIN_LINE_BYTES = 2048
"""How much of a line that is not JSON a reader looks at (a CLI's notices on stderr)."""
DETAIL_CHARS = 200
"""Longest ``Signal.detail``: a line for people, never the agent's whole output."""
LONGEST_CLI_WAIT = timedelta(seconds=60)
"""The longest wait ralph leaves to the CLI's own retries; see ``stop_now``."""


class SignalKind(StrEnum):
    """What one line of an agent's output says."""

    AUTH_FAILED = "auth_failed"
    """The model API refused the CLI's credentials: no retry of the CLI's own will help."""
    USAGE_LIMIT = "usage_limit"
    """The account's usage or rate limit (HTTP 429, a plan limit, a quota)."""
    API_OUTAGE = "api_outage"
    """The model API is overloaded (529) or failing (5xx, dropped connections)."""
    RETRYING = "retrying"
    """The CLI retries a request for a reason ralph has no class for."""
    PROGRESS = "progress"
    """Any other event of the CLI's: it is alive and working."""
    FINAL = "final"
    """The CLI's closing event (its result, its turn's end): its exit should follow."""

    @property
    def reason(self) -> Reason | None:
        """The failure class an attempt ended on this signal would have."""
        return _REASONS.get(self)


_REASONS = {
    SignalKind.AUTH_FAILED: Reason.AUTH,
    SignalKind.USAGE_LIMIT: Reason.USAGE_LIMIT,
    SignalKind.API_OUTAGE: Reason.API_OUTAGE,
}
_KINDS = {reason: kind for kind, reason in _REASONS.items()}


@dataclass(frozen=True)
class Signal:
    """What one line of the agent's output said, as data."""

    kind: SignalKind
    detail: str = ""
    """A few words for people (the CLI's error message, cut to ``DETAIL_CHARS``)."""
    status: int | None = None
    """The HTTP status the model API answered, when the CLI says."""
    retry_at: datetime | None = None
    """When the CLI retries, or when the limit resets, when the CLI says (UTC)."""
    cli_retries: bool = False
    """Whether the CLI itself is going to try again (True) or is giving up (False)."""
    retry: int | None = None
    """Which of the CLI's retries this is, when it counts them."""
    max_retries: int | None = None
    """How many retries the CLI allows itself, when it says."""

    @property
    def reason(self) -> Reason | None:
        """The failure class this signal points to (auth, usage limit, outage), if any."""
        return self.kind.reason

    def as_event(self) -> dict[str, Any]:
        """The fields of an ``agent_retrying`` (or similar) event."""
        return {
            "signal": self.kind.value,
            "detail": self.detail,
            "status": self.status,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "cli_retries": self.cli_retries,
            "retry": self.retry,
            "max_retries": self.max_retries,
        }


def stop_now(signal: Signal, now: datetime, longest_cli_wait: timedelta = LONGEST_CLI_WAIT) -> bool:
    """Whether ralph should stop the agent at once on ``signal`` instead of letting it go on.

    - **Auth: at once**, but for the first retry of a CLI that retries. No CLI gets past
      refused credentials by retrying, yet Claude Code retries a 401 ten times over about
      three minutes; the run stops for a person either way, so stop it now. The exception:
      a CLI logged in with OAuth may refresh its token once on a 401 and try again (Claude
      Code's source does), so a first retry may be a token that simply expired mid-run.
      Waiting for the second refusal costs about a second; a wrong verdict would stop the
      whole run until someone looks.
    - **A limit or an outage the CLI is about to wait out itself**: stop when the wait
      (``retry_at``) is further away than ``longest_cli_wait``. A wait inside the CLI is
      invisible to ralph, holds a process, and runs down the attempt and stall timeouts;
      ralph's own wait is bounded by ``retry_max_wait``, shows in ``ralph status``, ends
      on a stop, and costs no attempt. Shorter waits are left to the CLI: stopping throws
      away the attempt's work so far, which a few seconds of retrying usually saves. The
      default, 60 s, is Claude Code's own bound: it retries a 429 only when the server asks
      for at most 60 s, so with Claude ralph steps in only when told to wait longer.
    - **A limit or an outage the CLI is giving up on** (``cli_retries`` False): let it
      exit, which it is doing; its last lines carry the run's cost, and the report read
      after the exit classes the failure as before.
    - Retries of no known class, progress and the final event: nothing to stop.
    """
    if signal.kind is SignalKind.AUTH_FAILED:
        return not (signal.cli_retries and signal.retry == 1)
    if signal.kind not in (SignalKind.USAGE_LIMIT, SignalKind.API_OUTAGE):
        return False
    if not signal.cli_retries or signal.retry_at is None:
        return False
    return signal.retry_at - now > longest_cli_wait


class LiveReader(Protocol):
    """Reads one attempt's output while the agent runs."""

    def feed(self, line: bytes) -> list[Signal]:
        """What one complete line of output says; ``[]`` when it says nothing ralph reads."""
        ...


class EventReader:
    """The presets' readers: one JSON event per line, other lines ignored unless a preset
    reads them (``plain``). Subclasses say what each event means (``event``)."""

    def __init__(self, now: Callable[[], datetime]) -> None:
        self.now = now

    def feed(self, line: bytes) -> list[Signal]:
        head = line[:PLAIN_LINE_BYTES].lstrip()
        if not head.startswith(b"{"):
            text = head.decode("utf-8", errors="replace").strip()
            return self.plain(text) if text else []
        if len(line) > MAX_LINE_BYTES:
            return [Signal(SignalKind.PROGRESS, f"an event of {len(line)} bytes")]
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or cut off, or nested absurdly deep
            return []
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return []
        return self.event(event)

    def event(self, event: dict[str, Any]) -> list[Signal]:
        """What one of the CLI's events (a JSON object with a string ``type``) says."""
        return [progress(event["type"])]

    def plain(self, text: str) -> list[Signal]:
        """What a line that is not JSON says (its first ``PLAIN_LINE_BYTES``, stripped)."""
        return []


def progress(detail: str) -> Signal:
    """A sign of life: the CLI printed an event, named by ``detail``."""
    return Signal(SignalKind.PROGRESS, shorten(detail))


def kind_of(failure: Reason | None, otherwise: SignalKind) -> SignalKind:
    """The signal for a failure class; ``otherwise`` for none, or one live reading has none."""
    return _KINDS.get(failure, otherwise) if failure is not None else otherwise


def shorten(text: str) -> str:
    """``text`` on one line, cut to ``DETAIL_CHARS``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= DETAIL_CHARS else flat[: DETAIL_CHARS - 1] + "…"


def whole(value: object) -> int | None:
    """``value`` as an int when it is a JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def later(now: datetime, milliseconds: int | None) -> datetime | None:
    """``now`` plus a delay in milliseconds, or None without one."""
    return now + timedelta(milliseconds=milliseconds) if milliseconds is not None else None


def reset_in(text: str, failure: Reason | None, now: datetime) -> datetime | None:
    """For a usage limit, when the message says it resets; None for anything else."""
    return parse_reset(text, now) if failure is Reason.USAGE_LIMIT else None


_SECONDS = re.compile(r"\s*\d+(?:\.\d+)?\s*")


def retry_after(headers: object, now: datetime) -> datetime | None:
    """When an HTTP response's ``retry-after-ms`` or ``retry-after`` header says to retry."""
    if not isinstance(headers, dict):
        return None
    named = {str(key).lower(): str(value) for key, value in headers.items()}
    if _SECONDS.fullmatch(named.get("retry-after-ms", "x")):
        return now + timedelta(milliseconds=float(named["retry-after-ms"]))
    value = named.get("retry-after")
    if value is None:
        return None
    if _SECONDS.fullmatch(value):
        return now + timedelta(seconds=float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
