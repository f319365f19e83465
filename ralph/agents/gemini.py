"""Gemini CLI: headless with stream-json output, yolo approval, prompt on stdin.

The final ``result`` event carries the status, the error and token stats; exit code 41
means bad or missing credentials. Gemini reports no cost and no turn count.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import ClassVar

from ralph.agents import (
    AgentCommand,
    AgentReport,
    AgentRun,
    Preset,
    as_int,
    failed,
    json_events,
    register,
    text_report,
)
from ralph.agents.failures import classify_text
from ralph.outcome import Reason

EXIT_AUTH = 41


@register("gemini")
class GeminiAgent(Preset):
    """Gemini CLI in headless mode."""

    name: ClassVar[str]
    program = "gemini"

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = [
            "gemini",
            "--approval-mode",
            "yolo",
            "--output-format",
            "stream-json",
            *self.model_args("--model"),
        ]
        # An untrusted folder silently drops yolo back to asking: trust the work tree.
        return self.finish(argv, stdin=prompt_file, env={"GEMINI_CLI_TRUST_WORKSPACE": "true"})

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        result = None
        deltas: list[str] = []
        for event in json_events(run):
            if event.get("type") == "result":
                result = event
            elif event.get("type") == "message" and event.get("role") == "assistant":
                deltas.append(str(event.get("content") or ""))
        if run.exit_code == EXIT_AUTH:
            return AgentReport(failure=Reason.AUTH, detail="gemini: authentication failed")
        if result is None:
            return text_report(run, now)
        stats = result.get("stats") or {}
        known = AgentReport(
            input_tokens=as_int(stats.get("input_tokens")),
            output_tokens=as_int(stats.get("output_tokens")),
            final_message="".join(deltas) or None,
        )
        if result.get("status") != "error":
            return known
        error = result.get("error") or {}
        text = f"{error.get('type', '')} {error.get('message', '')} {run.tail[-2000:]}"
        return failed(known, text, now, classify_text(text), str(error.get("message", "")))
