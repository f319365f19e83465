"""Amp: execute mode with stream-json output, every command allowed, prompt on stdin.

The events are shaped like Claude Code's: a final ``result`` with ``num_turns`` and the
final text (or ``error``). Amp picks models by mode, so ``model`` becomes ``--mode``.
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
    as_int,
    failed,
    json_events,
    register,
    text_report,
)
from ralph.agents.failures import classify_text


@register("amp")
class AmpAgent(Preset):
    """Amp's execute mode."""

    name: ClassVar[str]
    program = "amp"

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = [
            "amp",
            "--execute",
            "--stream-json",
            "--dangerously-allow-all",
            *self.model_args("--mode"),
        ]
        return self.finish(argv, stdin=prompt_file)

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        result: dict[str, Any] | None = None
        tokens_in = tokens_out = None
        for event in json_events(run):
            if event.get("type") == "result":
                result = event
            elif event.get("type") == "assistant":
                usage = (event.get("message") or {}).get("usage") or {}
                tokens_in = add(tokens_in, _input_tokens(usage))
                tokens_out = add(tokens_out, usage.get("output_tokens"))
        if result is None:
            return text_report(
                run, now, AgentReport(input_tokens=tokens_in, output_tokens=tokens_out)
            )
        usage = result.get("usage") or {}
        final = result.get("result")
        known = AgentReport(
            input_tokens=_input_tokens(usage) or tokens_in,
            output_tokens=as_int(usage.get("output_tokens")) or tokens_out,
            turns=as_int(result.get("num_turns")),
            final_message=final if isinstance(final, str) else None,
        )
        if not result.get("is_error"):
            return known
        text = f"{result.get('error', '')} {run.tail[-2000:]}"
        return failed(known, text, now, classify_text(text), str(result.get("error", "")))


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """Input tokens including cache reads and writes, as the claude preset counts them."""
    return add(
        add(as_int(usage.get("input_tokens")), usage.get("cache_creation_input_tokens")),
        usage.get("cache_read_input_tokens"),
    )
