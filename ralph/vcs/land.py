"""Moving the work branch forward, in the user's work tree, without touching their work.

The branch moves only from the tip ralph expects (compare-and-swap), so a person's commit
made meanwhile is never overwritten. Where the branch is checked out, the person's work tree
and index follow the branch as ``git merge --ff-only`` would: files the new commit changes
are updated, everything else (their uncommitted edits, staged changes, new specs) is left
alone. If the new commit would overwrite an uncommitted change of theirs, nothing moves.

While it works ralph holds that work tree's ``index.lock``, as git itself does, so a
person's ``git commit`` at that moment is refused by git rather than mixed with ralph's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ralph.vcs.gitenv import Git

LOCK_WAIT = 600.0
"""How long a landing waits for a person's git (a commit waiting in their editor) to finish."""


@dataclass(frozen=True)
class Landed:
    """The branch now points at the new commit."""

    commit: str


@dataclass(frozen=True)
class Refused:
    """Nothing moved. ``moved``: the branch moved elsewhere meanwhile (try again on the new
    tip); else the work tree was busy or the person's uncommitted work was in the way."""

    moved: bool
    detail: str


@dataclass(frozen=True)
class Landing:
    """Where a landing works, recorded before it starts so recovery can finish or undo it."""

    worktree: Path | None
    """The work tree that has the branch checked out, or None."""
    index: Path | None
    scratch_index: Path | None

    def as_json(self) -> dict[str, str | None]:
        return {
            "worktree": str(self.worktree) if self.worktree else None,
            "index": str(self.index) if self.index else None,
            "scratch_index": str(self.scratch_index) if self.scratch_index else None,
        }


def checked_out_in(git: Git, branch: str) -> Path | None:
    """The work tree that has ``branch`` checked out (ralph's own are detached), if any."""
    ref = f"refs/heads/{branch}"
    current: Path | None = None
    for item in git.run("worktree", "list", "--porcelain", "-z").split("\0"):
        if item.startswith("worktree "):
            current = Path(item.removeprefix("worktree "))
        elif item == f"branch {ref}" and current is not None:
            return current
    return None


def plan_landing(git: Git, branch: str, scratch: Path) -> Landing:
    """Where the landing will work."""
    worktree = checked_out_in(git, branch)
    if worktree is None:
        return Landing(None, None, None)
    index = git.at(worktree).run("rev-parse", "--path-format=absolute", "--git-path", "index")
    return Landing(worktree, Path(index.strip()), scratch / f"landing-{uuid.uuid4().hex}.index")


@dataclass(frozen=True)
class Patience:
    """What a landing does while a person's git holds the work tree's index.lock."""

    waiting: Callable[[Path], None] = lambda _lock: None
    """Told once that ralph waits for the lock (to say so)."""
    give_up: Callable[[], bool] = lambda: False
    """Asked while waiting: True ends the wait (ralph was asked to stop)."""
    seconds: float = LOCK_WAIT


def advance(
    git: Git,
    branch: str,
    old: str,
    new: str,
    landing: Landing,
    *,
    reason: str,
    patience: Patience = Patience(),
) -> Landed | Refused:
    """Move ``branch`` from ``old`` to ``new`` and bring the work tree that has it checked out
    along; nothing moves when either can't be done safely."""
    ref = f"refs/heads/{branch}"
    if landing.worktree is None or landing.index is None or landing.scratch_index is None:
        if git.attempt("update-ref", "-m", reason, ref, new, old).ok:
            return Landed(new)
        return Refused(True, "the branch moved meanwhile")
    lock = _take_index_lock(landing.index, landing.worktree, patience)
    if lock is None:
        return Refused(False, f"a git process kept holding {landing.index}.lock")
    tree, scratch = git.at(landing.worktree), landing.scratch_index
    try:
        now = git.run("rev-parse", "-q", "--verify", ref, check=False).strip()
        if now != old:  # a person committed while ralph waited for the lock
            return Refused(True, "the branch moved meanwhile")
        if landing.index.exists():
            shutil.copyfile(landing.index, scratch)
        else:
            tree.run("read-tree", old, index=scratch)
        merged = tree.attempt("read-tree", "-m", "-u", old, new, index=scratch)
        if not merged.ok:
            return Refused(False, merged.stderr or "the work tree's changes are in the way")
        if not git.attempt("update-ref", "-m", reason, ref, new, old).ok:
            tree.attempt("read-tree", "-m", "-u", new, old, index=scratch)  # put the files back
            return Refused(True, "the branch moved meanwhile")
        _write_index(lock, scratch, landing.index)
        lock = None
        return Landed(new)
    finally:
        if lock is not None:
            os.close(lock)
            Path(f"{landing.index}.lock").unlink(missing_ok=True)
        scratch.unlink(missing_ok=True)


def finish_interrupted(git: Git, branch: str, old: str, new: str, landing: Landing) -> str:
    """After a kill during ``advance``: complete it or undo it, so branch, index and files
    agree again. Returns what was done."""
    if landing.worktree is None or landing.index is None or landing.scratch_index is None:
        return "nothing to do"
    tip = git.run("rev-parse", "-q", "--verify", f"refs/heads/{branch}", check=False).strip()
    lock = Path(f"{landing.index}.lock")
    scratch = landing.scratch_index
    tree = git.at(landing.worktree)
    try:
        if tip == new and scratch.exists():
            shutil.copyfile(scratch, lock)
            os.replace(lock, landing.index)  # the branch moved: the index follows it
            return "finished"
        if tip == old and scratch.exists():
            tree.attempt("read-tree", "-m", "-u", new, old, index=scratch)
            return "undone"
        return "nothing to do"
    finally:
        if not git_running_in(landing.worktree):  # else the lock is a live git's, not ours
            lock.unlink(missing_ok=True)
        scratch.unlink(missing_ok=True)


def _take_index_lock(index: Path, worktree: Path, patience: Patience) -> int | None:
    """Create ``index.lock`` exclusively. A lock a killed git left (no git process works in
    the tree) is removed; one a live git holds is waited for, as long as ``patience`` says."""
    lock = Path(f"{index}.lock")
    deadline = time.monotonic() + patience.seconds
    delay, told = 0.02, False
    while True:
        with contextlib.suppress(FileExistsError):
            return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if not git_running_in(worktree):
            time.sleep(0.05)  # a git that just started may not be visible yet
            if lock.exists() and not git_running_in(worktree):
                lock.unlink(missing_ok=True)  # stale: left by a git that was killed
                continue
        if not told:
            patience.waiting(lock)
            told = True
        if time.monotonic() > deadline or patience.give_up():
            return None
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def git_running_in(root: Path) -> bool:
    """True when a git process has its working directory in ``root``."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if (entry / "comm").read_text().strip() != "git":
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd == root or root in cwd.parents:
            return True
    return False


def _write_index(lock: int, scratch: Path, index: Path) -> None:
    """Write the merged index through the lock and put it in place, as git does."""
    try:
        with open(scratch, "rb") as source:
            while chunk := source.read(1 << 20):
                os.write(lock, chunk)
        os.fsync(lock)
    finally:
        os.close(lock)
    os.replace(f"{index}.lock", index)
