"""Agents: one small class per CLI, behind one Protocol, found by name.

An agent says how to start itself for a prompt, how to read its output while it runs
(``ralph.agents.live``) and what it printed once it has exited; running, timing out and
killing it belong to ralph.runtime.processes. Adding a CLI is one module with one
``@register``-ed class.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ralph.agents.failures import classify_text, parse_reset
from ralph.agents.live import LiveReader
from ralph.errors import SettingsError
from ralph.outcome import Reason
from ralph.settings import Settings

# The end of a failed run's output is where CLIs print why.
FAILURE_TEXT_BYTES = 4096


@dataclass(frozen=True)
class AgentCommand:
    """How to start the agent for one attempt."""

    argv: list[str]
    stdin: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentRun:
    """A finished agent run, as the preset gets it to read."""

    outcome: str
    exit_code: int | None
    log_path: Path
    tail: str


@dataclass(frozen=True)
class AgentReport:
    """What an agent's own output says about its run; None where it says nothing."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    turns: int | None = None
    final_message: str | None = None
    failure: Reason | None = None
    retry_at: datetime | None = None
    detail: str = ""

    def as_event(self) -> dict[str, Any]:
        """The fields that go into the agent_exited event."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "turns": self.turns,
            "final_message": (self.final_message or "")[-1000:] or None,
            "failure_class": self.failure.value if self.failure else None,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
        }


class Agent(Protocol):
    """What the loop needs from an agent."""

    name: ClassVar[str]

    def command(self, prompt_file: Path) -> AgentCommand:
        """The command line for an attempt whose prompt is in ``prompt_file``."""
        ...

    def executable(self) -> str:
        """The program that must be on PATH (or exist) for the agent to run."""
        ...

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        """Tokens, cost, turns, final message and, for a failed run, why it failed."""
        ...

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        """A reader for one attempt's output as it arrives; None when the CLI streams no
        events ralph can read. ``now`` gives the current time (UTC) for reset times."""
        ...

    def excludes(self) -> list[str]:
        """Paths the CLI writes in the repository for itself, kept out of git."""
        ...

    def model(self) -> str | None:
        """The model the CLI is told to use, or None when it gets none (its own default)."""
        ...


_REGISTRY: dict[str, Callable[[Settings, Path], Agent]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an agent class available as ``agent = "<name>"``."""

    def add(cls: type) -> type:
        setattr(cls, "name", name)  # noqa: B010 - the ClassVar is the registry's to set
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    """Names of the agents this version of ralph can run."""
    _load_presets()
    return sorted(_REGISTRY)


def make_agent(settings: Settings, root: Path) -> Agent:
    """The agent the settings ask for; SettingsError when ralph has no such agent."""
    _load_presets()
    factory = _REGISTRY.get(settings.agent)
    if factory is None:
        raise SettingsError(f"agent: no agent named {settings.agent!r}; one of {available()}")
    return factory(settings, root)


def _load_presets() -> None:
    # Imported here, not at the top: the preset modules import this one.
    from ralph.agents import aider, amp, claude, codex, gemini, generic, opencode  # noqa: F401


def agent_environment(base: Mapping[str, str], command: AgentCommand) -> dict[str, str]:
    """ralph's environment without what the CLI must not inherit, plus what it needs."""
    env = {key: value for key, value in base.items() if key not in command.unset}
    env.update(command.env)
    return env


def resolve_executable(program: str, root: Path) -> str | None:
    """Full path of ``program`` (a name on PATH or a path), or None when it can't run."""
    if "/" in program:
        path = (root / program).resolve()
        return str(path) if path.is_file() and shutil.which(str(path)) else None
    return shutil.which(program)


class Preset:
    """What the CLI presets share: model, extra flags, extra environment, text failures."""

    name: ClassVar[str]
    program: ClassVar[str] = ""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.settings = settings
        self.root = root

    def executable(self) -> str:
        return self.program

    def excludes(self) -> list[str]:
        return []

    def model(self) -> str | None:
        return self.settings.model

    def model_args(self, flag: str) -> list[str]:
        return [flag, self.settings.model] if self.settings.model else []

    def finish(
        self,
        argv: list[str],
        stdin: Path | None = None,
        env: Mapping[str, str] | None = None,
        last: tuple[str, ...] = (),
    ) -> AgentCommand:
        """The command with ``agent_args`` (then ``last``) appended, ``agent_env`` applied last."""
        return AgentCommand(
            [*argv, *self.settings.agent_args, *last],
            stdin=stdin,
            env={**(env or {}), **self.settings.agent_env},
            unset=self.unset,
        )

    # Set by an agent CLI for its own children; an agent that inherits them (because ralph
    # itself runs under one) believes it is nested and refuses to start or misbehaves.
    unset: ClassVar[tuple[str, ...]] = (
        "CLAUDECODE",
        "CLAUDE_CODE_ENTRYPOINT",
        "CLAUDE_CODE_SESSION_ID",
        "CLAUDE_CODE_SSE_PORT",
    )

    def report(self, run: AgentRun, now: datetime) -> AgentReport:
        return text_report(run, now)

    def live_reader(self, now: Callable[[], datetime]) -> LiveReader | None:
        return None


def text_report(run: AgentRun, now: datetime, known: AgentReport | None = None) -> AgentReport:
    """What is known plus, for a run that exited non-zero, the failure its last words name."""
    known = known or AgentReport()
    if run.outcome != "exited" or run.exit_code == 0:
        return known
    end = run.tail[-FAILURE_TEXT_BYTES:]
    return failed(known, end, now, classify_text(end), _last_line(end))


def failed(
    known: AgentReport, text: str, now: datetime, failure: Reason | None, detail: str
) -> AgentReport:
    """``known`` with the failure, and for a usage limit the reset time ``text`` gives."""
    retry_at = parse_reset(text, now) if failure is Reason.USAGE_LIMIT else None
    return dataclasses.replace(
        known, failure=failure, retry_at=known.retry_at or retry_at, detail=detail.strip()[:300]
    )


def json_events(run: AgentRun) -> Iterator[dict[str, Any]]:
    """Each JSON object the CLI printed, one per line; other lines are skipped."""
    try:
        handle = run.log_path.open("rb")
    except OSError:
        return
    with handle:
        for raw in handle:
            line = raw.strip()
            if not line.startswith(b"{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def as_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def add(total: int | None, value: object) -> int | None:
    number = as_int(value)
    if number is None:
        return total
    return number if total is None else total + number
