"""Which tasks may start now: runnable ones, by priority, that don't overlap a running task.

Two tasks whose ``touches`` globs could match one path never run at the same time; a task
without ``touches`` runs beside anything (the merge queue re-checks what lands).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ralph.backlog.tasks import Task
from ralph.globs import conflicts


def pick(tasks: Iterable[Task], running: Collection[Task], free: int) -> list[Task]:
    """Up to ``free`` tasks to start now, in the backlog's (priority, path) order."""
    chosen: list[Task] = []
    busy = [task.spec.touches for task in running if task.spec is not None]
    for task in tasks:
        if len(chosen) >= free:
            break
        if not task.runnable or task.spec is None:
            continue
        if any(task.id == other.id for other in running):
            continue
        touches = task.spec.touches
        if conflicts(touches, busy):
            continue
        chosen.append(task)
        busy.append(touches)
    return chosen
