"""OpenCode: ``opencode run`` with JSON events, every permission allowed, prompt on stdin.

Tokens and cost are summed over ``step_finish`` events; the final message is the last
``text`` part. OpenCode retries rate limits forever without a word, so only the
attempt timeout ends such a run.
"""

from __future__ import annotations

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
        data = error.get("data") or {}
        text = f"{error.get('name', '')} {data.get('message', '')} {data.get('responseBody', '')}"
        failure = (
            Reason.AUTH
            if error.get("name") == "ProviderAuthError"
            else classify_status(as_int(data.get("statusCode"))) or classify_text(text)
        )
        return failed(known, text, now, failure, text)
