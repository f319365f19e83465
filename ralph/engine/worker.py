"""Who works: the run's shared parts (``Run``) and one worker of it (``Worker``), passed down
explicitly; nothing here is global."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ralph.agents import Agent
from ralph.backlog.snapshot import Backlog, read_backlog
from ralph.backlog.specs import Spec
from ralph.backlog.state import StateStore
from ralph.engine.integration import Integration, LocalBranch
from ralph.observe.telemetry import EventLog
from ralph.observe.tracing import NoSpans, Spans
from ralph.runtime.processes import Stop
from ralph.runtime.service import Notifier
from ralph.settings import Settings
from ralph.vcs import repo
from ralph.vcs.gitenv import Git

if TYPE_CHECKING:
    from ralph.engine.claims import Claims
    from ralph.fleet import FleetQueue


def _local_claims() -> Claims:
    from ralph.engine.claims import LocalClaims  # the claims module builds on this one

    return LocalClaims()


@dataclass(frozen=True)
class Run:
    """What every worker of one ``ralph run`` shares."""

    root: Path
    settings: Settings
    agent: Agent
    env: Mapping[str, str]
    """ralph's own environment, as the CLI read it: the base of the agent's and the checks'."""
    events: EventLog
    state: StateStore
    stop: Stop
    branch: str
    git: Git
    """git in the user's work tree, run ralph's way (ralph.vcs.gitenv)."""
    spans: Spans = field(default_factory=NoSpans)
    notify: Notifier = field(default_factory=lambda: Notifier(None))
    cgroups: Path | None = None
    """The cgroup folder this ralph made for its attempts; None: process groups only."""
    integration: Integration | None = None
    """Where passed changes land; None: the local work branch (built on first use)."""
    claims: Claims = field(default_factory=lambda: _local_claims())
    """Who may work on which task: this process alone, or a fleet sharing a queue."""
    fleet: FleetQueue | None = None
    """With the ``queue`` setting: the shared queue (opened by the CLI)."""

    def __post_init__(self) -> None:
        if self.integration is None:
            local = LocalBranch(
                self.git,
                self.branch,
                self.state,
                self.events,
                self.stop,
                self.state.dir / "scratch",
            )
            object.__setattr__(self, "integration", local)

    @property
    def target(self) -> Integration:
        assert self.integration is not None
        return self.integration

    @property
    def ralph_dir(self) -> Path:
        return self.root / repo.STATE_DIR

    def backlog(self, running: Collection[str] = ()) -> Backlog:
        """Every task's state now (blocking: run it in a thread)."""
        return read_backlog(
            self.root, self.settings, self.state, self.target.done(), running=running
        )

    def max_attempts(self, spec: Spec) -> int:
        return spec.max_attempts or self.settings.max_attempts


@dataclass(frozen=True)
class Worker:
    """One of the run's workers: its number and its worktree, where its agents work."""

    run: Run
    number: int = 0

    @property
    def name(self) -> str:
        return f"w{self.number}"

    @property
    def worktree(self) -> Path:
        return self.run.ralph_dir / "worktrees" / self.name

    @property
    def tmpdir(self) -> Path:
        """The TMPDIR of its agents and checks, emptied before every attempt."""
        return self.run.ralph_dir / "tmp" / self.name

    @property
    def scratch(self) -> Path:
        """Private files of ralph's for this worker (indexes), out of the work tree."""
        return self.run.state.dir / "scratch" / self.name
