"""Claude Code: ``claude -p`` with stream-json output, auto-approving, prompt on stdin.

Reads the final ``result`` event (tokens, cost, turns, final text). A failed API call
ends as ``is_error: true`` with ``api_error_status`` even when ``subtype`` says
"success"; a plan limit also sends a ``rate_limit_event`` whose ``resetsAt`` is when
it resets.
"""

from __future__ import annotations

import dataclasses
import os
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
from ralph.outcome import Reason

# The assistant message's error field, as the CLI's SDK names them.
_ERRORS = {
    "authentication_failed": Reason.AUTH,
    "billing_error": Reason.AUTH,
    "rate_limit": Reason.USAGE_LIMIT,
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
            "--dangerously-skip-permissions",
            *self.model_args("--model"),
        ]
        # As root the permission bypass is refused unless the CLI is told it is sandboxed.
        env = {"IS_SANDBOX": "1"} if os.geteuid() == 0 else {}
        return self.finish(argv, stdin=prompt_file, env=env)

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
