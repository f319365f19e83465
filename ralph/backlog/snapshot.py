"""The backlog as it stands: every task's state, from one function everyone calls.

The loop, ``ralph status``, ``validate``, ``retry`` and recovery all read the backlog here,
so they can't disagree about where done tasks come from or whether a running task counts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from ralph.backlog.specs import load_specs
from ralph.backlog.state import StateStore
from ralph.backlog.tasks import State, Task, TaskRecord, next_task, plan
from ralph.settings import Settings


@dataclass(frozen=True)
class Backlog:
    """Every task, in the order ralph would run them; invalid specs last."""

    tasks: tuple[Task, ...]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def get(self, task_id: str) -> Task | None:
        return next((task for task in self.tasks if task.id == task_id), None)

    def next(self) -> Task | None:
        """The runnable task with the lowest (priority, path), if any."""
        return next_task(self.tasks)

    def exit_code(self) -> int:
        """0 when nothing failed, is blocked or invalid; 1 otherwise (``run --once``)."""
        bad = {State.FAILED, State.BLOCKED, State.INVALID}
        return 1 if any(task.state in bad for task in self.tasks) else 0


def read_backlog(
    root: Path,
    settings: Settings,
    state: StateStore,
    done_ids: Collection[str],
    *,
    running: Collection[str] = (),
) -> Backlog:
    """The state of every task now: specs from ``specs_dir``, ``done_ids`` from the history
    of the work branch, attempts and failures from ralph's records, and ``running`` as
    ralph says. Blocking: it reads files.
    """
    spec_set = load_specs(root / settings.specs_dir, f"{settings.specs_dir.as_posix()}/")
    done_ids = set(done_ids)
    records = state.records({spec.id: spec.digest for spec in spec_set.specs})
    for task_id, record in list(records.items()):
        if record.done_commit and task_id not in done_ids:
            # Its commit left the branch (a reset, a rebase): the task starts over, with all
            # its attempts, not with the count that once got it done.
            records[task_id] = TaskRecord()
    return Backlog(tuple(plan(spec_set, done_ids, records, running)))
