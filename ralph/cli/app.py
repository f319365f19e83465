"""What every command shares: the global options, and whether the agent can run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ralph import agents
from ralph.errors import SettingsError
from ralph.settings import Settings, load_settings
from ralph.vcs import repo


@dataclass(frozen=True)
class Context:
    """What the global options say, for every command."""

    path: Path
    log_format: str
    verbose: bool

    def root(self) -> Path:
        return repo.find_root(self.path)

    def settings(self, root: Path, **flags: Any) -> Settings:
        return load_settings(root, flags)


def agent_problems(settings: Settings, root: Path) -> list[str]:
    """Why the configured agent can't run, if it can't."""
    try:
        the_agent = agents.make_agent(settings, root)
    except SettingsError as exc:
        return [str(exc)]
    if agents.resolve_executable(the_agent.executable(), root) is None:
        return [f"agent: executable {the_agent.executable()!r} is not on PATH (or not executable)"]
    return []
