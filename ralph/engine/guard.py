"""What git's view of a change won't show: recorded before the agent starts, undone after.

Before the agent: a baseline of ``.git`` (refs, hooks, config, excludes), of git-ignored
files in protected paths, and of the specs the user has not committed yet (copied aside, so
no reset of the tree can lose them). After it: HEAD brought back to the start commit, and
whatever the agent did behind git's back put back and judged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import structlog

from ralph.engine.gate import Verdict
from ralph.engine.worker import Worker
from ralph.outcome import Reason
from ralph.runtime.atomic import write_atomic
from ralph.vcs import repo

log = structlog.get_logger("ralph")

BASELINE = "baseline.json"
USER_SPECS = "user-specs"
MOVED_ASIDE = "specs-changed-during-attempt"


def save_baseline(worker: Worker, attempt_dir: Path) -> None:
    """Record .git, ignored protected files and the uncommitted specs before the agent starts."""
    user_specs = _spec_signature(worker)
    for path, digest in user_specs.items():
        if digest is not None:
            copy = attempt_dir / USER_SPECS / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes((worker.root / path).read_bytes())
    baseline = {
        "git": repo.snapshot_to_json(repo.snapshot_git(worker.root)),
        "ignored_protected": sorted(
            repo.ignored_files(worker.root, worker.settings.protected_globs())
        ),
        "user_specs": user_specs,
    }
    write_atomic(attempt_dir / BASELINE, json.dumps(baseline))


def fold_head(worker: Worker, task_id: str, start: str) -> bool:
    """Bring HEAD back to the branch at ``start``, keeping the agent's changes in the tree.

    Returns True when the agent had moved HEAD (committed, reset or switched branches).
    """
    moved = repo.fold_head(worker.root, start, worker.branch)
    if moved:
        worker.events.emit("head_restored", task=task_id, start_commit=start)
        log.warning("ralph.head_restored", detail="the agent moved HEAD; its changes are kept")
    return moved


def undo_behind_git(worker: Worker, start: str, attempt_dir: Path) -> Verdict | None:
    """Undo what the agent did behind git's back, and say whether that fails the attempt.

    Touching hooks, config or excludes, hiding files from git in protected paths, or
    changing a spec (committed or not) fails the attempt; .git and hidden files are put
    back at once. Refs the agent made or moved are history: deleted or put back, no verdict.
    """
    baseline = _load_baseline(attempt_dir)
    if baseline is None:
        return None
    root = worker.root
    tampered = repo.restore_git(root, repo.snapshot_from_json(baseline["git"]), worker.branch)
    hidden = repo.ignored_files(root, worker.settings.protected_globs()) - set(
        baseline["ignored_protected"]
    )
    for path in sorted(hidden):
        _move_aside(root / path, attempt_dir / MOVED_ASIDE / path)
    before, after = baseline["user_specs"], _spec_signature(worker)
    specs_touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if specs_touched:
        _revert_specs(worker, start, attempt_dir, specs_touched, before)
    if tampered:
        return Verdict(Reason.GIT_TAMPERED, f"The agent changed {', '.join(tampered)} (restored).")
    if hidden or specs_touched:
        listed = ", ".join(sorted(hidden) + specs_touched)
        return Verdict(Reason.PROTECTED, f"The attempt changed protected paths: {listed}")
    return None


def _load_baseline(attempt_dir: Path) -> dict[str, Any] | None:
    try:
        baseline: dict[str, Any] = json.loads((attempt_dir / BASELINE).read_text("utf-8"))
    except (OSError, ValueError):
        return None  # killed before the baseline was written: the agent never started
    return baseline


def _spec_signature(worker: Worker) -> dict[str, str | None]:
    """Uncommitted paths under specs_dir with a hash of their content (None: deleted)."""
    specs = worker.settings.specs_dir.as_posix()
    signature: dict[str, str | None] = {}
    for path in repo.dirty_paths(worker.root, under=specs):
        full = worker.root / path
        signature[path] = hashlib.sha256(full.read_bytes()).hexdigest() if full.is_file() else None
    return signature


def _revert_specs(
    worker: Worker, start: str, attempt_dir: Path, paths: list[str], before: dict[str, Any]
) -> None:
    """Put specs back as they were before the attempt; keep what was found in their place.

    ralph can't tell an agent's edit from a person's made during the attempt, so the
    found version is moved aside, never deleted, and the log says where.
    """
    tracked = set(repo.tracked_files(worker.root, start, paths))
    for path in paths:
        target = worker.root / path
        if target.is_file():
            aside = attempt_dir / MOVED_ASIDE / path
            aside.parent.mkdir(parents=True, exist_ok=True)
            aside.write_bytes(target.read_bytes())
            log.warning("ralph.spec_moved_aside", path=path, kept_at=str(aside))
        if before.get(path) is not None:
            write_atomic(target, (attempt_dir / USER_SPECS / path).read_bytes())
        elif path not in before and path in tracked:
            repo.checkout_paths(worker.root, start, [path])
        else:
            target.unlink(missing_ok=True)


def _move_aside(path: Path, aside: Path) -> None:
    """Take a file out of the tree without losing it (the log says where it went)."""
    if not path.is_file():
        return
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.replace(aside)
    log.warning("ralph.file_moved_aside", path=str(path), kept_at=str(aside))


def reset_tree(worker: Worker, commit: str) -> None:
    """Reset the tree to ``commit``, leaving the specs folder as it is."""
    repo.restore(worker.root, commit, keep=worker.settings.specs_dir.as_posix())
