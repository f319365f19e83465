"""Claude Code: ``claude -p`` with stream-json output, auto-approving, prompt on stdin.

Reads the final ``result`` event (tokens, cost, turns, final text). A failed API call
ends as ``is_error: true`` with ``api_error_status`` even when ``subtype`` says
"success"; a plan limit also sends a ``rate_limit_event`` whose ``resetsAt`` is when
it resets.

While it runs, Claude Code announces each retry of a failed API request with a
``system``/``api_retry`` event before it waits, its status and error included: a refused
key (401, which it retries ten times over about three minutes), a rate limit (429, retried
only when the server asks for at most 60 s), an overload (529). With partial messages on,
every event of the model's answer is a line too, and a running tool sends a heartbeat
every 30 s, so a long silence means a stuck CLI.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from ralph.agents import (
    AgentCommand,
    AgentReport,
    AgentRun,
    Preset,
    add,
    as_float,
    as_int,
    failed,
    json_events,
    register,
    text_report,
)
from ralph.agents.failures import classify_status, classify_text
from ralph.agents.live import (
    EventReader,
    LiveReader,
    Signal,
    SignalKind,
    kind_of,
    later,
    progress,
    reset_in,
    shorten,
    whole,
)
from ralph.outcome import Reason

# The error field of api_retry events and of the synthetic assistant message that reports a
# failed API call, as the CLI names them.
_ERRORS = {
    "authentication_failed": Reason.AUTH,
    "billing_error": Reason.AUTH,
    "oauth_org_not_allowed": Reason.AUTH,
    "account_on_hold": Reason.AUTH,
    "rate_limit": Reason.USAGE_LIMIT,
    "overloaded": Reason.API_OUTAGE,
    "server_error": Reason.API_OUTAGE,
}


@register("claude")
class ClaudeAgent(Preset):
    """Claude Code in print mode."""

    name: ClassVar[str]
    program = "claude"

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = [
            "claude",
            "--print",
            "--output-format",
            "stream-json",
            "--verbose",  # stream-json in print mode refuses to run without it
            # Without it a long answer is one line at its end, minutes later: too quiet
            # for a stall timeout to tell a slow model from a stuck CLI.
            "--include-partial-messages",
            "--dangerously-skip-permissions",
            *self.model_args("--model"),
        ]
        # As root the permission bypass is refused unless the CLI is told it is sandboxed.
        env = {"IS_SANDBOX": "1"} if os.geteuid() == 0 else {}
        return self.finish(argv, stdin=prompt_file, env=env)

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        return ClaudeStream(now)

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        result: dict[str, Any] | None = None
        reset: datetime | None = None
        assistant_error = ""
        for event in json_events(run):
            kind = event.get("type")
            if kind == "result":
                result = event
            elif kind == "rate_limit_event":
                info = event.get("rate_limit_info") or {}
                if info.get("status") == "rejected" and as_int(info.get("resetsAt")):
                    reset = datetime.fromtimestamp(int(info["resetsAt"]), UTC)
            elif kind == "assistant" and isinstance(event.get("error"), str):
                assistant_error = event["error"]
        if result is None:
            return text_report(run, now)
        usage = result.get("usage") or {}
        tokens_in = add(
            add(as_int(usage.get("input_tokens")), usage.get("cache_creation_input_tokens")),
            usage.get("cache_read_input_tokens"),
        )
        final = result.get("result")
        known = AgentReport(
            input_tokens=tokens_in,
            output_tokens=as_int(usage.get("output_tokens")),
            cost_usd=as_float(result.get("total_cost_usd")),
            turns=as_int(result.get("num_turns")),
            final_message=final if isinstance(final, str) else None,
        )
        if not result.get("is_error"):
            return known
        text = f"{final or ''} {' '.join(map(str, result.get('errors') or []))}"
        failure = (
            classify_status(as_int(result.get("api_error_status")))
            or _ERRORS.get(assistant_error)
            or classify_text(text)
        )
        if failure is Reason.USAGE_LIMIT and reset is not None:
            known = dataclasses.replace(known, retry_at=reset)
        return failed(known, text, now, failure, text)


class ClaudeStream(EventReader):
    """Claude Code's stream-json, read line by line while it runs."""

    def event(self, event: dict[str, Any]) -> list[Signal]:
        kind = event["type"]
        if kind == "system" and event.get("subtype") == "api_retry":
            return [self._retry(event)]
        if kind == "rate_limit_event":
            return [self._rate_limit(event)]
        if kind == "assistant" and isinstance(event.get("error"), str):
            return [self._api_error(event, event["error"])]
        if kind == "result":
            return self._result(event)
        return [progress(_name(event))]

    def _retry(self, event: dict[str, Any]) -> Signal:
        """A failed request the CLI is about to retry, after ``retry_delay_ms``."""
        status = whole(event.get("error_status"))
        error = str(event.get("error") or "unknown")
        delay = whole(event.get("retry_delay_ms"))
        retry, of = whole(event.get("attempt")), whole(event.get("max_retries"))
        failure = classify_status(status) or _ERRORS.get(error)
        answer = f"HTTP {status}" if status is not None else "no response"
        wait = f" in {delay / 1000:.1f} s" if delay is not None else ""
        return Signal(
            kind_of(failure, SignalKind.RETRYING),
            shorten(f"{answer}, {error}: retry {retry} of {of}{wait}"),
            status,
            later(self.now(), delay),
            cli_retries=True,
            retry=retry,
            max_retries=of,
        )

    def _rate_limit(self, event: dict[str, Any]) -> Signal:
        """A plan limit's state; "rejected" means the CLI gives up until ``resetsAt``."""
        info = event.get("rate_limit_info")
        if not isinstance(info, dict) or info.get("status") != "rejected":
            return progress("rate_limit_event")
        resets = whole(info.get("resetsAt"))
        which = str(info.get("rateLimitType") or "usage")
        return Signal(
            SignalKind.USAGE_LIMIT,
            shorten(f"{which} limit reached"),
            retry_at=datetime.fromtimestamp(resets, UTC) if resets else None,
        )

    def _api_error(self, event: dict[str, Any], error: str) -> Signal:
        """The synthetic assistant message that reports a request the CLI gave up on."""
        status = whole(event.get("api_error_status"))
        failure = classify_status(status) or _ERRORS.get(error)
        if failure is None:
            return progress(f"assistant {error}")
        text = _text(event.get("message")) or error
        return Signal(
            kind_of(failure, SignalKind.PROGRESS),
            shorten(text),
            status,
            reset_in(text, failure, self.now()),
        )

    def _result(self, event: dict[str, Any]) -> list[Signal]:
        status = whole(event.get("api_error_status"))
        final = Signal(
            SignalKind.FINAL,
            shorten(str(event.get("terminal_reason") or event.get("subtype") or "result")),
            status,
        )
        if event.get("is_error") is not True:
            return [final]
        text = str(event.get("result") or "")[:2000]
        failure = classify_status(status) or classify_text(text)
        if failure is None:
            return [final]
        verdict = Signal(
            kind_of(failure, SignalKind.PROGRESS),
            shorten(text),
            status,
            reset_in(text, failure, self.now()),
        )
        return [verdict, final]


def _name(event: dict[str, Any]) -> str:
    """An event's type, and its subtype or inner event's type where it has one."""
    inner = event.get("event")
    sub = event.get("subtype") or (inner.get("type") if isinstance(inner, dict) else None)
    return f"{event['type']} {sub}" if isinstance(sub, str) else str(event["type"])


def _text(message: object) -> str:
    """The text of an assistant message's first text block."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return ""
    for block in message["content"]:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            return str(block["text"])
    return ""
