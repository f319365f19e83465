"""OpenCode: ``opencode run`` with JSON events, every permission allowed, prompt on stdin.

Tokens and cost are summed over ``step_finish`` events; the final message is the last
``text`` part. OpenCode retries rate limits and outages without a word, up to five times,
and honours a provider's ``retry-after`` however long it is; only the error it gives up
on becomes an ``error`` event (a refused key is not retried: an ``APIError`` with status
401 at once). A long ``retry-after`` is therefore silence, which only a stall or attempt
timeout ends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
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
    progress,
    reset_in,
    retry_after,
    shorten,
    whole,
)
from ralph.outcome import Reason


@register("opencode")
class OpenCodeAgent(Preset):
    """OpenCode's non-interactive run."""

    name: ClassVar[str]
    program = "opencode"

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = ["opencode", "run", "--format", "json", *self.model_args("--model")]
        # The permission variable works across releases; the flag was renamed twice.
        return self.finish(
            argv,
            stdin=prompt_file,
            env={"OPENCODE_PERMISSION": '{"*":"allow"}', "OPENCODE_DISABLE_AUTOUPDATE": "1"},
        )

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        return OpenCodeStream(now)

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        tokens_in = tokens_out = turns = None
        cost: float | None = None
        final = None
        error: dict[str, Any] | None = None
        for event in json_events(run):
            part = event.get("part") or {}
            kind = event.get("type")
            if kind == "step_finish":
                tokens = part.get("tokens") or {}
                cache = tokens.get("cache") or {}
                tokens_in = add(
                    add(add(tokens_in, tokens.get("input")), cache.get("read")), cache.get("write")
                )
                tokens_out = add(tokens_out, tokens.get("output"))
                step_cost = as_float(part.get("cost"))
                cost = step_cost if cost is None else cost + (step_cost or 0.0)
                turns = (turns or 0) + 1
            elif kind == "text" and isinstance(part.get("text"), str):
                final = part["text"]
            elif kind == "error" and isinstance(event.get("error"), dict):
                error = event["error"]
        known = AgentReport(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=cost,
            turns=turns,
            final_message=final,
        )
        if error is None:
            return text_report(run, now, known)
        failure, text = error_failure(error)
        if failure is Reason.USAGE_LIMIT:
            known = dataclasses.replace(known, retry_at=retry_after(_headers(error), now))
        return failed(known, text, now, failure, text)


def _headers(error: dict[str, Any]) -> object:
    """The HTTP response headers an ``APIError`` carries (where a retry-after is)."""
    data = error.get("data")
    return data.get("responseHeaders") if isinstance(data, dict) else None


def error_failure(error: dict[str, Any]) -> tuple[Reason | None, str]:
    """The failure class of an ``error`` event's error, and the words it was read from."""
    data = error.get("data")
    data = data if isinstance(data, dict) else {}
    name = str(error.get("name") or "")
    text = f"{name} {data.get('message') or ''} {str(data.get('responseBody') or '')[:2000]}"
    if name == "ProviderAuthError":
        return Reason.AUTH, text
    return classify_status(as_int(data.get("statusCode"))) or classify_text(text), text


class OpenCodeStream(EventReader):
    """OpenCode's JSON events, read line by line while it runs."""

    def event(self, event: dict[str, Any]) -> list[Signal]:
        kind = event["type"]
        error = event.get("error")
        if kind == "error" and isinstance(error, dict):
            return [self._error(error)]
        part = event.get("part")
        part = part if isinstance(part, dict) else {}
        if kind == "step_finish" and part.get("reason") == "stop":
            return [Signal(SignalKind.FINAL, "step_finish stop")]
        tool = part.get("tool")
        return [progress(f"{kind} {tool}" if isinstance(tool, str) else kind)]

    def _error(self, error: dict[str, Any]) -> Signal:
        """The error OpenCode gave up on (its retries before it are silent)."""
        failure, text = error_failure(error)
        name = str(error.get("name") or "error")
        if failure is None:
            return progress(f"error {name}")
        data = error.get("data")
        data = data if isinstance(data, dict) else {}
        now = self.now()
        waited = retry_after(_headers(error), now) if failure is Reason.USAGE_LIMIT else None
        return Signal(
            kind_of(failure, SignalKind.PROGRESS),
            shorten(f"{name}: {data.get('message') or ''}"),
            whole(data.get("statusCode")),
            waited or reset_in(text, failure, now),
        )
