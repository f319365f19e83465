"""Agents: one small class per kind of agent, behind one Protocol, found by name.

An agent only says how to start itself for a prompt; running, timing out and killing
it belong to ralph.processes. Adding a CLI preset is one class with ``@register``.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from ralph.errors import SettingsError
from ralph.settings import Settings

# Variables a parent CLI sets for its own children; a nested agent that inherits them
# believes it runs inside another session and misbehaves.
NESTING_VARIABLES = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")


@dataclass(frozen=True)
class AgentCommand:
    """How to start the agent for one attempt."""

    argv: list[str]
    stdin: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


class Agent(Protocol):
    """What the loop needs from an agent."""

    name: ClassVar[str]

    def command(self, prompt_file: Path) -> AgentCommand:
        """The command line for an attempt whose prompt is in ``prompt_file``."""
        ...

    def executable(self) -> str:
        """The program that must be on PATH (or exist) for the agent to run."""
        ...


_REGISTRY: dict[str, Callable[[Settings, Path], Agent]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an agent class available as ``agent = "<name>"``."""

    def add(cls: type) -> type:
        setattr(cls, "name", name)  # noqa: B010 - ClassVar set by the registry
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    """Names of the agents this version of ralph can run."""
    return sorted(_REGISTRY)


def make_agent(settings: Settings, root: Path) -> Agent:
    """The agent the settings ask for; SettingsError when ralph has no such agent."""
    factory = _REGISTRY.get(settings.agent)
    if factory is None:
        raise SettingsError(
            f"agent: {settings.agent!r} has no preset in this version yet; "
            f'use agent = "command" with agent_command, or one of: {", ".join(available())}'
        )
    return factory(settings, root)


def agent_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """ralph's environment minus the nesting variables, plus ``extra``."""
    env = {key: value for key, value in base.items() if key not in NESTING_VARIABLES}
    env.update(extra)
    return env


def resolve_executable(program: str, root: Path) -> str | None:
    """Full path of ``program`` (a name on PATH or a path), or None when it can't run."""
    if "/" in program:
        path = (root / program).resolve()
        return str(path) if path.is_file() and shutil.which(str(path)) else None
    return shutil.which(program)


@register("command")
class CommandAgent:
    """Any agent CLI given as ``agent_command``; ``{prompt_file}`` or the prompt on stdin."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, root: Path) -> None:
        try:
            self._words = shlex.split(settings.agent_command or "")
        except ValueError as exc:
            raise SettingsError(f"agent_command: cannot parse: {exc}") from None
        if not self._words:
            raise SettingsError('agent_command: required when agent = "command"')

    def command(self, prompt_file: Path) -> AgentCommand:
        if any("{prompt_file}" in word for word in self._words):
            argv = [word.replace("{prompt_file}", str(prompt_file)) for word in self._words]
            return AgentCommand(argv)
        return AgentCommand(list(self._words), stdin=prompt_file)

    def executable(self) -> str:
        return self._words[0]


@register("scripted")
class ScriptedAgent:
    """ralph's own deterministic agent (``ralph.scripted``): offline, for demos and tests."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, root: Path) -> None:
        assert settings.agent_script is not None  # load_settings guarantees it
        self._script = (root / settings.agent_script).resolve()
        if not self._script.is_file():
            raise SettingsError(f"agent_script: {self._script} does not exist")

    def command(self, prompt_file: Path) -> AgentCommand:
        return AgentCommand([sys.executable, "-m", "ralph.scripted", str(self._script)])

    def executable(self) -> str:
        return sys.executable


@register("claude")
class ClaudeAgent:
    """Claude Code in print mode, auto-approving, prompt on stdin, streaming JSON events."""

    name: ClassVar[str]

    def __init__(self, settings: Settings, root: Path) -> None:
        self._settings = settings

    def command(self, prompt_file: Path) -> AgentCommand:
        argv = [
            "claude",
            "--print",
            "--output-format",
            "stream-json",
            "--verbose",
            "--dangerously-skip-permissions",
        ]
        return AgentCommand(argv, stdin=prompt_file)

    def executable(self) -> str:
        return "claude"
