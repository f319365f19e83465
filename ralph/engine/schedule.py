"""Which tasks may start now: runnable ones, by priority, that don't overlap a running task.

Two tasks whose ``touches`` globs could match one path never run at the same time; a task
without ``touches`` runs beside anything (the merge queue re-checks what lands).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from ralph.backlog.tasks import Task

_WILD = "*?["


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
        if touches and any(overlap(touches, other) for other in busy if other):
            continue
        chosen.append(task)
        busy.append(touches)
    return chosen


def overlap(first: Sequence[str], second: Sequence[str]) -> bool:
    """Whether some path could match a glob of each (conservatively: yes when unsure)."""
    return any(_globs_overlap(a, b) for a in first for b in second)


def _globs_overlap(first: str, second: str) -> bool:
    """Two globs overlap when one's fixed leading folders lead into the other's."""
    a, b = _fixed_parts(first), _fixed_parts(second)
    if a[1] and b[1]:  # both fully fixed paths: the same path, or one inside the other
        return _inside(a[0], b[0]) or _inside(b[0], a[0])
    return _inside(a[0], b[0]) or _inside(b[0], a[0])


def _fixed_parts(glob: str) -> tuple[list[str], bool]:
    """The folders before the first wildcard, and whether the whole glob is fixed."""
    parts = [part for part in glob.strip("/").split("/") if part]
    fixed: list[str] = []
    for part in parts:
        if any(char in part for char in _WILD):
            return fixed, False
        fixed.append(part)
    return fixed, True


def _inside(prefix: list[str], path: list[str]) -> bool:
    return path[: len(prefix)] == prefix
