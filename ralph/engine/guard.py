"""What an agent may do to ``.git`` behind git's back, undone before ralph runs any git.

Before the agent starts: the files under ``.git`` that decide what git runs or hides
(configuration, hooks, excludes, attributes, grafts, shallow, alternates) are read into
memory, and every ref is noted. After it exits, and before any git command: the files are
written back, and refs it made or moved are deleted or put back. Changed files fail the
attempt (``git_tampered``); refs are history and need no verdict, because ralph builds the
commit itself from the worktree's files.

The work branch may also move because a person committed. An agent's move is told from a
person's by the commits: if the new tip holds commits made in the agent's worktree, the agent
moved it, and it is put back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from ralph.runtime.atomic import write_atomic
from ralph.vcs.gitenv import Git

log = structlog.get_logger("ralph")

# Relative to the common git directory; what git reads to decide what it runs or hides.
GUARDED_FILES = (
    "config",
    "info/exclude",
    "info/attributes",
    "info/grafts",
    "info/sparse-checkout",
    "shallow",
    "objects/info/alternates",
    "commondir",
)
GUARDED_DIRS = ("hooks",)


@dataclass(frozen=True)
class GitFiles:
    """The guarded files under ``.git`` as they were: content and mode, None when absent."""

    files: Mapping[str, tuple[bytes, int] | None]


def take(common: Path, worktree_gitdir: Path | None = None) -> GitFiles:
    """Read the guarded files now (the worktree's own config too, when given)."""
    return GitFiles(dict(_guarded(common, worktree_gitdir)))


def _guarded(
    common: Path, worktree_gitdir: Path | None
) -> Iterator[tuple[str, tuple[bytes, int] | None]]:
    for name in GUARDED_FILES:
        yield name, _read(common / name)
    for folder in GUARDED_DIRS:
        for path in sorted((common / folder).rglob("*")) if (common / folder).is_dir() else []:
            if path.is_file() or path.is_symlink():
                yield path.relative_to(common).as_posix(), _read(path)
    if worktree_gitdir is not None:
        for name in ("config.worktree", "info/exclude", "info/sparse-checkout"):
            key = f"{worktree_gitdir.relative_to(common).as_posix()}/{name}"
            yield key, _read(worktree_gitdir / name)


def restore(common: Path, before: GitFiles, worktree_gitdir: Path | None = None) -> list[str]:
    """Put the guarded files back as ``before``; return the ones that had changed."""
    now = take(common, worktree_gitdir)
    changed = sorted(
        name
        for name in before.files.keys() | now.files.keys()
        if before.files.get(name) != now.files.get(name)
    )
    for name in changed:
        _put(common / name, before.files.get(name))
    for folder in GUARDED_DIRS:
        _remove_empty_dirs(common / folder)
    return [f".git/{name}" for name in changed]


def _read(path: Path) -> tuple[bytes, int] | None:
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            return os.readlink(path).encode("utf-8", "surrogateescape"), info.st_mode
        if not stat.S_ISREG(info.st_mode):
            return b"", info.st_mode
        return path.read_bytes(), info.st_mode & 0o7777
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _put(path: Path, content: tuple[bytes, int] | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if content is None:
        return
    data, mode = content
    path.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(mode):
        os.symlink(data.decode("utf-8", "surrogateescape"), path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode & 0o7777)


def _remove_empty_dirs(folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()


# --- refs ------------------------------------------------------------------------------------


def refs(git: Git) -> dict[str, str]:
    """Every ref and what it points at, but remote-tracking refs (``refs/remotes/``): ralph's
    own fetches and yours move them while an agent works, and ralph trusts none of them (it
    reads the remote from the tip it fetched itself, kept in memory)."""
    out = git.run("for-each-ref", "--format=%(refname) %(objectname)")
    pairs = (line.split(" ", 1) for line in out.splitlines() if " " in line)
    return {ref: sha for ref, sha in pairs if not ref.startswith("refs/remotes/")}


def restore_refs(
    git: Git, before: Mapping[str, str], branch: str, agent_commits: set[str]
) -> list[str]:
    """Delete refs made during the attempt and put moved ones back; return what moved.

    The work branch is left alone unless its new tip is one of ``agent_commits`` (or holds
    one): a person may commit while an agent works, and their commit is theirs.
    """
    after = refs(git)
    work = f"refs/heads/{branch}"
    moved = []
    for ref, sha in after.items():
        if before.get(ref) == sha:
            continue
        if ref == work:
            if before.get(ref) and _holds_any(git, sha, agent_commits, before[ref]):
                git.run("update-ref", ref, before[ref], sha)
                moved.append(ref)
            continue
        if ref in before:
            git.run("update-ref", ref, before[ref])
        else:
            git.run("update-ref", "-d", ref)
        moved.append(ref)
    for ref, sha in before.items():
        if ref not in after:
            git.run("update-ref", ref, sha)
            moved.append(ref)
    return moved


def _holds_any(git: Git, tip: str, commits: set[str], old_tip: str) -> bool:
    """Whether ``tip`` is or descends from a commit made in the agent's worktree."""
    if not commits:
        return False
    if tip in commits:
        return True
    new = git.run("rev-list", f"{old_tip}..{tip}", "--", check=False, history=True).split()
    return bool(commits.intersection(new))


def worktree_commits(tree: Git, start: str) -> set[str]:
    """Commits the agent made in its worktree: reachable from its HEAD, not from ``start``."""
    head = tree.run("rev-parse", "-q", "--verify", "HEAD", check=False).strip()
    if not head or head == start:
        return set()
    listed = tree.run("rev-list", f"{start}..{head}", "--", check=False, history=True)
    return set(listed.split())


# --- kept for recovery ----------------------------------------------------------------------

BASELINE = "baseline.json"


def save(path: Path, git_files: GitFiles, refs: Mapping[str, str]) -> None:
    """Keep the guarded files and the refs as they were before the agent ran, where recovery
    after a kill finds them (ralph's records, outside the work tree)."""
    files = {
        name: None if value is None else [base64.b64encode(value[0]).decode(), value[1]]
        for name, value in git_files.files.items()
    }
    write_atomic(path, json.dumps({"files": files, "refs": dict(refs)}) + "\n")


def load(path: Path) -> tuple[GitFiles, dict[str, str]] | None:
    """What ``save`` kept; None when it is missing or unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        files = {
            str(name): None if value is None else (base64.b64decode(value[0]), int(value[1]))
            for name, value in raw["files"].items()
        }
        refs = {str(ref): str(sha) for ref, sha in raw["refs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return GitFiles(files), refs
