"""The worker: everything an attempt needs for one work tree, passed down explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ralph.agents import Agent
from ralph.backlog.snapshot import Backlog, read_backlog
from ralph.backlog.specs import Spec
from ralph.backlog.state import StateStore
from ralph.observe.telemetry import EventLog
from ralph.observe.tracing import NoSpans, Spans
from ralph.runtime.processes import Stop
from ralph.runtime.service import Notifier
from ralph.settings import Settings
from ralph.vcs import repo


@dataclass(frozen=True)
class Worker:
    """Everything an attempt needs, for one work tree. Nothing here is global."""

    root: Path
    settings: Settings
    agent: Agent
    env: Mapping[str, str]
    events: EventLog
    state: StateStore
    stop: Stop
    branch: str
    spans: Spans = field(default_factory=NoSpans)
    notify: Notifier = field(default_factory=lambda: Notifier(None))
    done: repo.DoneTasks = field(default_factory=repo.DoneTasks)

    @property
    def ralph_dir(self) -> Path:
        return self.root / repo.STATE_DIR

    def backlog(self) -> Backlog:
        """Every task's state now (blocking: run it in a thread)."""
        return read_backlog(self.root, self.settings, self.state, self.done)

    def max_attempts(self, spec: Spec) -> int:
        return spec.max_attempts or self.settings.max_attempts
