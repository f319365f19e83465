"""Aider: one message from a file, yes to everything that is safe, never committing.

Aider has no structured output and exits 0 even when the model API failed, so its
report reads the ``Tokens: ... Cost: ...`` lines and its own error sentences.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import ClassVar

from ralph.agents import AgentCommand, AgentReport, AgentRun, Preset, failed, register
from ralph.outcome import Reason

_TOKENS = re.compile(
    r"Tokens:\s+(?P<sent>[\d.]+k?)\s+sent,.*?(?P<received>[\d.]+k?)\s+received\."
    r"(?:.*?Cost:.*?\$(?P<session>[\d.]+)\s+session)?",
    re.DOTALL,
)
# Aider's own words after a failed API call (it exits 0 all the same).
_FAILURES = (
    ("is not able to authenticate you", Reason.AUTH),
    ("Permission was denied. Check your API key", Reason.AUTH),
    ("has rate limited you", Reason.USAGE_LIMIT),
    ("servers are down or overloaded", Reason.API_OUTAGE),
    ("timed out without returning a response", Reason.API_OUTAGE),
)


def _count(text: str) -> int:
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(float(text))


@register("aider")
class AiderAgent(Preset):
    """Aider in one-message mode."""

    name: ClassVar[str]
    program = "aider"

    def command(self, prompt_file: Path) -> AgentCommand:
        history = prompt_file.parent
        argv = [
            "aider",
            "--message-file",
            str(prompt_file),
            "--yes-always",
            # ralph makes the commits; aider would commit edits and pre-existing changes.
            "--no-auto-commits",
            "--no-dirty-commits",
            # Each of these is a question --yes-always would otherwise answer yes to.
            "--no-gitignore",
            "--no-check-update",
            "--analytics-disable",
            "--no-show-model-warnings",
            "--no-detect-urls",
            "--no-suggest-shell-commands",
            "--no-pretty",
            "--no-stream",
            "--no-fancy-input",
            "--chat-history-file",
            str(history / "aider.chat.history.md"),
            "--input-history-file",
            str(history / "aider.input.history"),
            *self.model_args("--model"),
        ]
        return self.finish(argv)

    def excludes(self) -> list[str]:
        return ["/.aider*"]

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        text = run.log_path.read_text(errors="replace") if run.log_path.exists() else run.tail
        sent = received = turns = 0
        cost: float | None = None
        for match in _TOKENS.finditer(text):
            sent += _count(match.group("sent"))
            received += _count(match.group("received"))
            turns += 1
            if match.group("session"):
                cost = float(match.group("session"))
        known = AgentReport(
            input_tokens=sent if turns else None,
            output_tokens=received if turns else None,
            cost_usd=cost,
            turns=turns or None,
        )
        end = text[-4096:]
        for words, failure in _FAILURES:
            if words in end:
                return failed(known, end, now, failure, words)
        return known
