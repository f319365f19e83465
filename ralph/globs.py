"""Globs over repository paths, as specs and settings write them: matching, and whether two
sets of globs could match one path (``touches``). Standard library only."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

_WILD = "*?["


@functools.lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("(?:/.*)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))


def matches(path: str, globs: Sequence[str]) -> bool:
    """True when ``path`` (from the repository root) matches any glob; ``**`` spans folders."""
    return any(_glob_regex(glob.strip("/")).fullmatch(path) for glob in globs)


def overlap(first: Sequence[str], second: Sequence[str]) -> bool:
    """Whether some path could match a glob of each, conservatively: yes when one glob's
    fixed leading folders lead into the other's (``src/**`` and ``src/api/x.py``)."""
    return any(_globs_overlap(a, b) for a in first for b in second)


def conflicts(touches: Sequence[str], busy: Iterable[Sequence[str]]) -> bool:
    """Whether a task with ``touches`` may not start beside tasks holding ``busy``; a task
    without touches runs beside anything."""
    return bool(touches) and any(overlap(touches, other) for other in busy if other)


def _globs_overlap(first: str, second: str) -> bool:
    a, b = _fixed_folders(first), _fixed_folders(second)
    return a[: len(b)] == b or b[: len(a)] == a


def _fixed_folders(glob: str) -> list[str]:
    """The path parts before the first wildcard."""
    fixed: list[str] = []
    for part in (part for part in glob.strip("/").split("/") if part):
        if any(char in part for char in _WILD):
            break
        fixed.append(part)
    return fixed
