"""Run-wide tallies and why a run ends: tasks attempted, money spent, the breaker's streak."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import structlog

from ralph.engine.worker import Run
from ralph.errors import RalphError
from ralph.outcome import Reason

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class RunOptions:
    """What the command line asks of this run."""

    once: bool = False
    max_tasks: int | None = None


class RunEnd(StrEnum):
    """Why the loop ended: logged in ``run_finished``, so a daemon never stops unexplained."""

    SIGNAL = "signal"
    DEADLINE = "deadline"
    MAX_TASKS = "max_tasks"
    COST_CAP = "cost_cap"
    BREAKER = "breaker"
    BACKLOG_DONE = "backlog_done"
    AUTH = "auth"
    LIMIT_TOO_FAR = "limit_too_far"
    ERROR = "error"


@dataclass(frozen=True)
class TaskOutcome:
    """How a task's turn in the loop ended."""

    status: Literal["done", "failed", "interrupted"]
    last_reason: Reason | None = None
    cost_usd: float = 0.0


class BreakerTripped(RalphError):
    """Too many tasks in a row failed the same way: stop instead of burning the backlog."""


class Ledger:
    """Run-wide tallies: tasks attempted, money spent, and the breaker's streak."""

    def __init__(self, run: Run, options: RunOptions) -> None:
        self.run = run
        self.options = options
        self.attempted = 0
        self.spent = 0.0
        self.streak: tuple[Reason | None, int] = (None, 0)

    def enough(self) -> RunEnd | None:
        """Why --max-tasks or max_cost_usd says to take no new task, or None."""
        if self.options.max_tasks is not None and self.attempted >= self.options.max_tasks:
            return RunEnd.MAX_TASKS
        cap = self.run.settings.max_cost_usd
        if cap is not None and self.spent >= cap:
            log.warning("ralph.cost_cap_reached", spent_usd=round(self.spent, 4), cap_usd=cap)
            self.run.events.emit("cost_cap_reached", spent_usd=self.spent, cap_usd=cap)
            return RunEnd.COST_CAP
        return None

    def record(self, outcome: TaskOutcome) -> None:
        """Count the task; trip the breaker on a streak of the same failure."""
        self.attempted += 1
        self.spent += outcome.cost_usd
        if outcome.status != "failed":
            self.streak = (None, 0) if outcome.status == "done" else self.streak
            return
        last, count = self.streak
        count = count + 1 if outcome.last_reason == last else 1
        self.streak = (outcome.last_reason, count)
        threshold = self.run.settings.breaker_threshold
        if count >= threshold:
            reason = outcome.last_reason.value if outcome.last_reason else "interrupted"
            self.run.events.emit("breaker_tripped", failure_class=reason, tasks=count)
            raise BreakerTripped(
                f"{count} tasks in a row failed with {reason}; stopping "
                f"(breaker_threshold = {threshold}). Look at the last attempts under .ralph/"
            )
