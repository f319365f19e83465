"""Gemini CLI: headless with stream-json output, yolo approval, prompt on stdin.

The final ``result`` event carries the status, the error and token stats; exit code 41
means missing or unusable auth settings. A key the API refuses ends in a ``result``
error whose message holds the API's own error (``API_KEY_INVALID``, ``UNAUTHENTICATED``),
with an exit code made of the HTTP status (144 for 400, 145 for 401). Gemini reports no
cost and no turn count.

While it runs, Gemini retries 429s and 5xx up to ten times without an event: its only
word is a line on stderr, "Attempt 3 failed: <message>. Retrying after 5687ms..." or
"Attempt 4 failed with status 503. Retrying with backoff...", which ralph reads too.
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
)
from ralph.outcome import Reason

EXIT_AUTH = 41
# The Google API's own words for a refused key, inside the result's error message (JSON
# text); the upper-case status names, so a test's prose can't match them.
_REFUSED_KEY = re.compile(
    r'API_KEY_INVALID|"status":\s*"(?:UNAUTHENTICATED|PERMISSION_DENIED)"|"code":\s*40[13]\b'
)
_CODE = re.compile(r'"code":\s*(\d{3})\b')
# Gemini's retry notices on stderr (packages/core/src/utils/retry.ts).
_ATTEMPT = re.compile(r"Attempt (\d+) failed\b(.*)", re.DOTALL)
_WITH_STATUS = re.compile(r"\s*with (?:status )?(\d{3})\b")
_RETRYING_AFTER = re.compile(r"Retrying after (\d+)ms")


def failure_in(message: str) -> Reason | None:
    """The failure class of a ``result`` error message."""
    return Reason.AUTH if _REFUSED_KEY.search(message) else classify_text(message)


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

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        return GeminiStream(now)

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
        message = str(error.get("message", ""))
        text = f"{error.get('type', '')} {message} {run.tail[-2000:]}"
        return failed(known, text, now, failure_in(message) or classify_text(text), message)


class GeminiStream(EventReader):
    """Gemini's stream-json events and its retry notices on stderr, read while it runs."""

    def event(self, event: dict[str, Any]) -> list[Signal]:
        kind = event["type"]
        if kind != "result":
            what = event.get("tool_name") or event.get("role") or event.get("severity")
            return [progress(f"{kind} {what}" if isinstance(what, str) else kind)]
        status = str(event.get("status") or "")
        final = Signal(SignalKind.FINAL, shorten(f"result {status}"))
        error = event.get("error")
        if status != "error" or not isinstance(error, dict):
            return [final]
        message = str(error.get("message") or "")[:4000]
        failure = failure_in(message)
        if failure is None:
            return [final]
        code = _CODE.search(message)
        verdict = Signal(
            kind_of(failure, SignalKind.PROGRESS),
            shorten(message),
            int(code.group(1)) if code else None,
            reset_in(message, failure, self.now()),
        )
        return [verdict, final]

    def plain(self, text: str) -> list[Signal]:
        attempt = _ATTEMPT.match(text)
        if attempt is None:
            return []
        rest = attempt.group(2)
        with_status = _WITH_STATUS.match(rest)
        status = int(with_status.group(1)) if with_status else None
        failure = classify_status(status) or classify_text(rest)
        delay = _RETRYING_AFTER.search(rest)
        now = self.now()
        retry_at = later(now, int(delay.group(1))) if delay else reset_in(rest, failure, now)
        return [
            Signal(
                kind_of(failure, SignalKind.RETRYING),
                shorten(f"attempt {attempt.group(1)} failed{rest}"),
                status,
                retry_at,
                cli_retries=True,
                retry=int(attempt.group(1)),
            )
        ]
