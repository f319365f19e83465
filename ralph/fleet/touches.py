"""Whether two tasks' ``touches`` globs could match one path (the engine's scheduling rule).

The same conservative check as ``ralph.engine.schedule``, kept here so the queue needs
nothing above it: two globs overlap when one's fixed leading folders lead into the other's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_WILD = "*?["


def conflicts(touches: Sequence[str], busy: Iterable[Sequence[str]]) -> bool:
    """Whether a task with ``touches`` may not start beside tasks holding ``busy``.

    A task without touches runs beside anything, as in the local scheduler.
    """
    return bool(touches) and any(overlap(touches, other) for other in busy if other)


def overlap(first: Sequence[str], second: Sequence[str]) -> bool:
    """Whether some path could match a glob of each (conservatively: yes when unsure)."""
    return any(_globs_overlap(a, b) for a in first for b in second)


def _globs_overlap(first: str, second: str) -> bool:
    a, b = _fixed_folders(first), _fixed_folders(second)
    return _inside(a, b) or _inside(b, a)


def _fixed_folders(glob: str) -> list[str]:
    """The path parts before the first wildcard."""
    fixed: list[str] = []
    for part in (part for part in glob.strip("/").split("/") if part):
        if any(char in part for char in _WILD):
            break
        fixed.append(part)
    return fixed


def _inside(prefix: list[str], path: list[str]) -> bool:
    return path[: len(prefix)] == prefix
