"""Codex CLI: ``codex exec`` with JSONL events, no approvals, prompt on stdin.

Tokens come from ``turn.completed`` usage, summed; the final message is the last
``agent_message`` item; ``turn.failed`` and ``error`` events say why a run failed.
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
    failed,
    json_events,
    register,
    text_report,
)
from ralph.agents.failures import classify_text


@register("codex")
class CodexAgent(Preset):
    """Codex CLI's non-interactive exec."""

    name: ClassVar[str]
    program = "codex"

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = [
            "codex",
            "exec",
            "--json",
            # ralph is the sandbox and the gate: the agent must act without asking.
            "--dangerously-bypass-approvals-and-sandbox",
            "--skip-git-repo-check",
            *self.model_args("--model"),
        ]
        return self.finish(argv, stdin=prompt_file, last=("-",))  # "-": prompt from stdin

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        tokens_in = tokens_out = None
        turns = 0
        final = None
        errors: list[str] = []
        failed_turn = False
        for event in json_events(run):
            kind = event.get("type")
            if kind == "turn.completed":
                usage: dict[str, Any] = event.get("usage") or {}
                tokens_in = add(tokens_in, usage.get("input_tokens"))
                tokens_out = add(tokens_out, usage.get("output_tokens"))
                turns += 1
            elif kind == "item.completed":
                item = event.get("item") or {}
                if item.get("type") == "agent_message" and isinstance(item.get("text"), str):
                    final = item["text"]
            elif kind == "turn.failed":
                failed_turn = True
                errors.append(str((event.get("error") or {}).get("message", "")))
            elif kind == "error":
                errors.append(str(event.get("message", "")))
        known = AgentReport(
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            turns=turns or None,
            final_message=final,
        )
        # "Reconnecting... k/N" errors precede a turn that may still complete: only a failed
        # turn or a failed exit counts.
        if not failed_turn and (run.outcome != "exited" or run.exit_code == 0):
            return known
        if not errors:
            return text_report(run, now, known)
        text = " ".join(errors)
        failure = classify_text(text) or classify_text(run.tail[-2000:])
        return failed(known, text, now, failure, text)
