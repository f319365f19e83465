"""The two agents that are not a CLI preset: any command line, and ralph's scripted fake."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from ralph.agents import (
    AgentCommand,
    AgentReport,
    AgentRun,
    Preset,
    as_float,
    as_int,
    json_events,
    register,
    text_report,
)
from ralph.agents.claude import ClaudeStream
from ralph.agents.live import LiveReader
from ralph.errors import SettingsError
from ralph.settings import Settings


@register("command")
class CommandAgent(Preset):
    """Any agent CLI as ``agent_command``; ``{prompt_file}`` or the prompt on stdin."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, root: Path) -> None:
        super().__init__(settings, root)
        try:
            self._words = shlex.split(settings.agent_command or "")
        except ValueError as exc:
            raise SettingsError(f"agent_command: cannot parse: {exc}") from None
        if not self._words:
            raise SettingsError('agent_command: required when agent = "command"')

    def command(self, prompt_file: Path) -> AgentCommand:
        if any("{prompt_file}" in word for word in self._words):
            argv = [word.replace("{prompt_file}", str(prompt_file)) for word in self._words]
            return self.finish(argv)
        return self.finish(list(self._words), stdin=prompt_file)

    def executable(self) -> str:
        return self._words[0]

    def model(self) -> str | None:
        return None  # a command line of the user's own: ralph passes no model to it


@register("scripted")
class ScriptedAgent(Preset):
    """ralph's own deterministic agent (``ralph.scripted``): offline, for demos and tests."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, root: Path) -> None:
        super().__init__(settings, root)
        assert settings.agent_script is not None  # load_settings guarantees it
        self._script = (root / settings.agent_script).resolve()
        if not self._script.is_file():
            raise SettingsError(f"agent_script: {self._script} does not exist")

    def command(self, prompt_file: Path) -> AgentCommand:
        return self.finish([sys.executable, "-m", "ralph.scripted", str(self._script)])

    def executable(self) -> str:
        return sys.executable

    def model(self) -> str | None:
        return None  # the scripted agent has no model

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        """Read live as Claude Code: a script plays a CLI's retries, refusals and silences
        by printing Claude Code's stream-json events (its ``print`` and ``sleep`` steps)."""
        return ClaudeStream(now)

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        """The scripted agent reports figures as a ``{"ralph_report": {...}}`` line."""
        figures: dict[str, Any] = {}
        for event in json_events(run):
            if isinstance(event.get("ralph_report"), dict):
                figures = event["ralph_report"]
        final = figures.get("final_message")
        known = AgentReport(
            input_tokens=as_int(figures.get("input_tokens")),
            output_tokens=as_int(figures.get("output_tokens")),
            cost_usd=as_float(figures.get("cost_usd")),
            turns=as_int(figures.get("turns")),
            final_message=final if isinstance(final, str) else None,
        )
        return text_report(run, now, known)
