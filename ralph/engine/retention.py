"""Attempt folders don't pile up: ``.ralph/attempts`` is pruned at start and once a day.

Always kept: every attempt in progress, and each task's last failed attempt (its diff is
what a person looks at). Any other folder is removed once it is older than
``keep_attempts_for`` or not among the newest ``keep_attempts``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio import to_thread

from ralph.engine.worker import Run
from ralph.runtime.atomic import bytes_under

log = structlog.get_logger("ralph")

DAY = 86400.0


@dataclass(frozen=True)
class Pruned:
    """What one pruning removed."""

    folders: int
    bytes: int


def prune_attempts(run: Run, now: float | None = None) -> Pruned:
    """Remove attempt folders the retention settings don't keep (blocking)."""
    root = run.ralph_dir / "attempts"
    if not root.is_dir() or root.is_symlink():
        return Pruned(0, 0)
    folders = sorted(_attempt_folders(root), key=_mtime, reverse=True)  # newest first
    keep = _always_kept(run, folders)
    settings = run.settings
    cutoff = (now or time.time()) - settings.keep_attempts_for
    removed, size = 0, 0
    for position, folder in enumerate(folders):
        if folder in keep:
            continue
        if position < settings.keep_attempts and _mtime(folder) >= cutoff:
            continue
        size += bytes_under(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    for task_dir in root.iterdir():
        if task_dir.is_dir() and not task_dir.is_symlink() and not any(task_dir.iterdir()):
            task_dir.rmdir()
    if removed:
        log.info("ralph.attempts_pruned", folders=removed, bytes=size)
    return Pruned(removed, size)


async def prune_daily(run: Run) -> None:
    """Until cancelled: prune once a day."""
    while True:
        await anyio.sleep(DAY)
        await to_thread.run_sync(prune_attempts, run)


def _attempt_folders(root: Path) -> list[Path]:
    return [
        folder
        for task_dir in root.iterdir()
        if task_dir.is_dir() and not task_dir.is_symlink()
        for folder in task_dir.iterdir()
        if folder.is_dir() and not folder.is_symlink()
    ]


def _always_kept(run: Run, folders: list[Path]) -> set[Path]:
    """Attempts in progress, and the newest failed attempt of each task."""
    keep = {Path(intent.attempt_dir) for intent in run.state.interrupted_attempts()}
    seen_tasks: set[Path] = set()
    for folder in folders:  # newest first
        if folder.parent in seen_tasks:
            continue
        if (folder / "changes.diff").exists() or (folder / "interrupted.diff").exists():
            keep.add(folder)
            seen_tasks.add(folder.parent)
    return keep


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:
        return 0.0
