"""Codex CLI: ``codex exec`` with JSONL events, no approvals, prompt on stdin.

Tokens come from ``turn.completed`` usage, summed; the final message is the last
``agent_message`` item; ``turn.failed`` and ``error`` events say why a run failed.

While it runs, Codex announces each retry as an ``error`` event, "Reconnecting... 2/5
(unexpected status 401 Unauthorized: ...)", and a request it gives up on as a plain
``error`` followed by ``turn.failed``. Its events drop the structured error, so the class
comes from the message's words, as after the exit.
"""

from __future__ import annotations

import re
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
    shorten,
)
from ralph.outcome import Reason

_RECONNECTING = re.compile(r"Reconnecting\.\.\. (\d+)/(\d+)(?: \((.*)\))?", re.DOTALL)
# "unexpected status 401 Unauthorized: ...", "last status: 429 Too Many Requests",
# "(status 403 Forbidden)"
_STATUS = re.compile(r"\bstatus:? (\d{3})\b")


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

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        return CodexStream(now)

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


class CodexStream(EventReader):
    """Codex's ``exec --json`` events, read line by line while it runs."""

    def event(self, event: dict[str, Any]) -> list[Signal]:
        kind = event["type"]
        if kind == "error":
            return [self._error(str(event.get("message") or ""))]
        if kind == "turn.failed":
            error = event.get("error")
            message = str(error.get("message") or "") if isinstance(error, dict) else ""
            verdict = self._giving_up(message)
            return [*([verdict] if verdict else []), Signal(SignalKind.FINAL, "turn.failed")]
        if kind == "turn.completed":
            return [Signal(SignalKind.FINAL, "turn.completed")]
        item = event.get("item")
        what = item.get("type") if isinstance(item, dict) else None
        return [progress(f"{kind} {what}" if isinstance(what, str) else kind)]

    def _error(self, message: str) -> Signal:
        reconnecting = _RECONNECTING.match(message)
        if reconnecting is None:
            return self._giving_up(message) or progress(f"error: {message}")
        cause = reconnecting.group(3) or ""
        status, failure = _classify(cause)
        return Signal(
            kind_of(failure, SignalKind.RETRYING),
            shorten(message),
            status,
            cli_retries=True,
            retry=int(reconnecting.group(1)),
            max_retries=int(reconnecting.group(2)),
        )

    def _giving_up(self, message: str) -> Signal | None:
        """A request Codex does not retry: the class its message names, if any."""
        status, failure = _classify(message)
        if failure is None:
            return None
        return Signal(
            kind_of(failure, SignalKind.PROGRESS),
            shorten(message),
            status,
            reset_in(message, failure, self.now()),
        )


def _classify(message: str) -> tuple[int | None, Reason | None]:
    """The HTTP status a Codex error message names, and its failure class."""
    found = _STATUS.search(message)
    status = int(found.group(1)) if found else None
    return status, classify_status(status) or classify_text(message)
