"""Every git operation ralph makes, through GitPython.

Each function opens the repository, does one thing and closes it again: GitPython
caches processes and memory maps per ``Repo``, which leaks in a long-running daemon.
These functions block; the loop calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from ralph.errors import RepositoryError

TASK_TRAILER = "Ralph-Task"
ATTEMPT_TRAILER = "Ralph-Attempt"
LEARNINGS_TRAILER = "Ralph-Learnings"
STATE_DIR = ".ralph"
_FALLBACK_IDENTITY = ("ralph", "ralph@localhost")


@dataclass(frozen=True)
class Change:
    """One path changed relative to the starting commit, as ``git diff --name-status`` says."""

    status: str  # A, M, D, T (type change)
    path: str


@contextmanager
def open_repo(root: Path) -> Iterator[git.Repo]:
    """Open the repository at ``root`` for one operation and close it afterwards."""
    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise RepositoryError(f"{root}: not a git repository (run `git init` first)") from None
    try:
        yield repo
    finally:
        repo.close()


def find_root(path: Path) -> Path:
    """The top of the work tree that contains ``path``."""
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except git.NoSuchPathError:
        raise RepositoryError(f"{path}: no such directory") from None
    except git.InvalidGitRepositoryError:
        raise RepositoryError(f"{path}: not a git repository (run `git init` first)") from None
    try:
        if repo.bare or repo.working_tree_dir is None:
            raise RepositoryError(f"{path}: a bare repository has no work tree to work in")
        return Path(repo.working_tree_dir)
    finally:
        repo.close()


def current_branch(root: Path) -> str:
    """The checked-out branch; a detached HEAD or an unborn branch is an error."""
    with open_repo(root) as repo:
        if repo.head.is_detached:
            raise RepositoryError(
                f"{root}: HEAD is detached; check out the branch ralph should commit to"
            )
        branch = repo.head.ref.name
        if not repo.head.is_valid():
            raise RepositoryError(
                f"{root}: branch {branch} has no commits yet; make a first commit, then run ralph"
            )
        return branch


def head_commit(root: Path) -> str:
    """The commit HEAD points at."""
    with open_repo(root) as repo:
        return repo.head.commit.hexsha


def ensure_excluded(root: Path) -> None:
    """Keep ``.ralph/`` out of git through ``.git/info/exclude``; never touch ``.gitignore``."""
    with open_repo(root) as repo:
        exclude = Path(repo.common_dir) / "info" / "exclude"
    line = f"/{STATE_DIR}/"
    text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    if line in text.splitlines():
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    prefix = "" if not text or text.endswith("\n") else "\n"
    with exclude.open("a", encoding="utf-8") as handle:
        handle.write(f"{prefix}# ralph's runtime state and logs\n{line}\n")


def dirty_paths(root: Path) -> list[str]:
    """Tracked changes and untracked files, as ``git status`` lists them (ignored ones not)."""
    with open_repo(root) as repo:
        out = repo.git.status("--porcelain=v1", "-z", "--untracked-files=all")
    entries = [entry for entry in out.split("\0") if entry]
    paths: list[str] = []
    skip = False
    for entry in entries:
        if skip:  # the source path of a rename
            skip = False
            continue
        paths.append(entry[3:])
        skip = entry[0] in "RC"
    return paths


def done_tasks(root: Path) -> set[str]:
    """Ids of tasks with a ``Ralph-Task`` trailer on a commit reachable from HEAD."""
    with open_repo(root) as repo:
        if not repo.head.is_valid():
            return set()
        out = repo.git.log(
            f"--grep=^{TASK_TRAILER}:",
            f"--format=%(trailers:key={TASK_TRAILER},valueonly)",
        )
    return {line.strip() for line in out.splitlines() if line.strip()}


def fold_head(root: Path, start: str, branch: str) -> bool:
    """Bring HEAD back to ``branch`` at ``start``, keeping the work tree as the agent left it.

    Returns True when the agent had moved HEAD (committed, reset or switched branches).
    """
    with open_repo(root) as repo:
        moved = False
        if repo.head.is_detached or repo.head.ref.name != branch:
            repo.git.symbolic_ref("HEAD", f"refs/heads/{branch}")
            moved = True
        try:
            tip = repo.git.rev_parse("--verify", "-q", f"refs/heads/{branch}")
        except git.GitCommandError:  # the agent deleted the branch
            tip = ""
        if tip != start:
            repo.git.update_ref(f"refs/heads/{branch}", start)
            moved = True
        if moved:
            repo.git.reset("-q", "--mixed", start)
        return moved


def stage_changes(root: Path, start: str) -> list[Change]:
    """Stage everything the attempt changed (as ``git add -A`` sees it) and list it."""
    with open_repo(root) as repo:
        repo.git.add(A=True)
        out = repo.git.diff("--cached", "--name-status", "--no-renames", "-z", start)
    parts = [part for part in out.split("\0") if part]
    return [Change(status[0], path) for status, path in zip(parts[::2], parts[1::2], strict=True)]


def save_diff(root: Path, start: str, dest: Path) -> None:
    """Write the staged change against ``start`` as a binary patch, for forensics."""
    with open_repo(root) as repo:
        patch = repo.git.diff("--cached", "--binary", start, stdout_as_string=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(patch + (b"\n" if patch and not patch.endswith(b"\n") else b""))


def restore(root: Path, start: str) -> None:
    """Put tracked and untracked files back as they are at ``start``; ignored files stay."""
    with open_repo(root) as repo:
        repo.git.reset("-q", "--hard", start)
        repo.git.clean("-q", "-f", "-f", "-d")


def stage_paths(root: Path, paths: list[str]) -> None:
    """Stage exactly these paths (for a commit that holds only the memory file)."""
    with open_repo(root) as repo:
        repo.git.add("--", *paths)


def commit(root: Path, message: str, *, run_hooks: bool) -> str:
    """Commit the index with ``message``; return the new commit's id.

    Repository hooks are skipped unless ``run_hooks``: a hook an agent planted must never
    run with ralph's rights.
    """
    message_file = root / STATE_DIR / "COMMIT_MSG"
    message_file.parent.mkdir(parents=True, exist_ok=True)
    message_file.write_text(message, encoding="utf-8")
    with open_repo(root) as repo:
        options = [] if run_hooks else ["-c", f"core.hooksPath={os.devnull}"]
        reader = repo.config_reader()
        if not reader.get_value("user", "name", "") or not reader.get_value("user", "email", ""):
            name, email = _FALLBACK_IDENTITY
            options += ["-c", f"user.name={name}", "-c", f"user.email={email}"]
        verify = [] if run_hooks else ["--no-verify"]
        repo.git.execute(
            [
                "git",
                *options,
                "commit",
                "-q",
                "--allow-empty",  # the gate already decided; allow_empty tasks change nothing
                *verify,
                "--cleanup=verbatim",
                "-F",
                str(message_file),
            ]
        )
        return repo.head.commit.hexsha


def task_message(title: str, trailers: dict[str, str]) -> str:
    """A commit message: one-line subject, blank line, trailers."""
    subject = " ".join(title.split()) or "ralph task"
    lines = [f"{key}: {value}" for key, value in trailers.items()]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"
