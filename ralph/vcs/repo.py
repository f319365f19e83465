"""Every git operation ralph makes, through GitPython.

Each function opens the repository, does one thing and closes it again: GitPython
caches processes and memory maps per ``Repo``, which leaks in a long-running daemon.
These functions block; the loop calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import git
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ralph.errors import RepositoryError
from ralph.vcs.land import git_running_in
from ralph.vcs.trees import status_paths

TASK_TRAILER = "Ralph-Task"
LEARNINGS_TRAILER = "Ralph-Learnings"
STATE_DIR = ".ralph"
_FALLBACK_IDENTITY = ("ralph", "ralph@localhost")


class CommitRejected(RepositoryError):
    """git refused ralph's commit (a hook with run_hooks, a signing failure...)."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


P = ParamSpec("P")
R = TypeVar("R")
# What an agent may not change under .git/ (refs are handled separately: folded back).


def _index_locked(exc: BaseException) -> bool:
    return isinstance(exc, git.GitCommandError) and "index.lock" in str(exc.stderr)


def survives_index_lock(func: Callable[P, R]) -> Callable[P, R]:
    """Retry a git write while ``index.lock`` exists; remove the lock if it is stale.

    A git killed mid-write (with ralph, or by the agent) leaves the lock behind. ralph
    waits a bounded time for a live git to finish; if no git process works in the
    repository by then, the lock is stale and is removed, else the error is clear.
    """
    patient = retry(
        retry=retry_if_exception(_index_locked),
        stop=stop_after_attempt(8) | stop_after_delay(3),
        wait=wait_exponential(multiplier=0.05, max=0.5),
        reraise=True,
    )(func)

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return patient(*args, **kwargs)
        except git.GitCommandError as exc:
            if not _index_locked(exc):
                raise
            root = Path(str(args[0]))
            lock = Path(git_dir(root)) / "index.lock"
            if git_running_in(root):
                raise RepositoryError(
                    f"{lock} is held by a running git process; stop it or remove the lock"
                ) from None
            lock.unlink(missing_ok=True)
            return func(*args, **kwargs)

    return run


def git_dir(root: Path) -> str:
    with open_repo(root) as repo:
        return str(repo.git_dir)


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


def branch_name(root: Path) -> str | None:
    """The checked-out branch, even one with no commits yet; None when HEAD is detached."""
    with open_repo(root) as repo:
        return None if repo.head.is_detached else str(repo.head.ref.name)


def ensure_excluded(root: Path, extra: list[str] | None = None) -> None:
    """Keep ``.ralph/`` (and an agent's own caches) out of git through ``.git/info/exclude``.

    Never through ``.gitignore``, which is the user's.
    """
    with open_repo(root) as repo:
        exclude = Path(repo.common_dir) / "info" / "exclude"
    text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
    present = set(text.splitlines())
    missing = [line for line in [f"/{STATE_DIR}/", *(extra or [])] if line not in present]
    if not missing:
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    prefix = "" if not text or text.endswith("\n") else "\n"
    with exclude.open("a", encoding="utf-8") as handle:
        handle.write(prefix + "# kept out of git by ralph\n" + "".join(f"{m}\n" for m in missing))


def dirty_paths(root: Path, under: str | None = None) -> list[str]:
    """Tracked changes and untracked files, as ``git status`` lists them (ignored ones not)."""
    pathspec = ["--", f":(top){under}"] if under else []
    with open_repo(root) as repo:
        try:
            out = repo.git.status("--porcelain=v1", "-z", "--untracked-files=all", *pathspec)
        except git.GitCommandError as exc:
            raise RepositoryError(
                f"git status failed in {root}: {_git_output(exc)[-300:]}; if the index is "
                "corrupt, `rm .git/index && git reset` rebuilds it and keeps your files"
            ) from None
    return status_paths(out)


@dataclass
class DoneTasks:
    """The ids committed on the branch, read incrementally: a long-running daemon must not
    walk the whole history before every task.

    Done-ness stays in git: when HEAD moved anywhere but forward (a reset, a rebase, a
    branch switch), the history is read again from scratch.
    """

    head: str = ""
    ids: frozenset[str] = frozenset()

    def read(self, root: Path) -> set[str]:
        with open_repo(root) as repo:
            if not repo.head.is_valid():
                self.head, self.ids = "", frozenset()
                return set()
            head = repo.head.commit.hexsha
            if head == self.head:
                return set(self.ids)
            forward = bool(self.head) and _is_ancestor(repo, self.head, head)
            revisions = [f"{self.head}..{head}"] if forward else [head]
            out = repo.git.log(
                f"--grep=^{TASK_TRAILER}:",
                f"--format=%(trailers:key={TASK_TRAILER},valueonly)",
                *revisions,
            )
        found = {line.strip() for line in out.splitlines() if line.strip()}
        self.ids = frozenset(found | (self.ids if forward else set()))
        self.head = head
        return set(self.ids)


def _is_ancestor(repo: git.Repo, older: str, newer: str) -> bool:
    try:
        repo.git.merge_base("--is-ancestor", older, newer)
    except git.GitCommandError:
        return False  # not an ancestor, or no longer there at all
    return True


def done_tasks(root: Path) -> set[str]:
    """Ids of tasks with a ``Ralph-Task`` trailer on a commit reachable from HEAD."""
    return DoneTasks().read(root)


def save_worktree_diff(root: Path, dest: Path, leave_out: str) -> None:
    """Write the tree's uncommitted changes (tracked and untracked, but ``leave_out``) against
    HEAD as a binary patch, through a private index: the user's index is not touched."""
    index = dest.with_name(dest.name + ".index")
    env = {"GIT_INDEX_FILE": str(index)}
    with open_repo(root) as repo:
        repo.git.read_tree("HEAD", env=env)
        repo.git.add("-A", "--", ":/", f":(top,exclude){leave_out}", env=env)
        patch = repo.git.diff("--cached", "--binary", "HEAD", stdout_as_string=False, env=env)
    index.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(patch)


def save_diff(root: Path, start: str, dest: Path) -> None:
    """Write the staged change against ``start`` as a binary patch, for forensics."""
    with open_repo(root) as repo:
        patch = repo.git.diff("--cached", "--binary", start, stdout_as_string=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(patch + (b"\n" if patch and not patch.endswith(b"\n") else b""))


@survives_index_lock
def restore(root: Path, start: str, keep: str | None = None) -> None:
    """Put tracked and untracked files back as they are at ``start``; ignored files stay.

    Nothing under ``keep`` (the specs folder) is touched: specs being written by a
    person while an attempt runs must survive its rollback.
    """
    with open_repo(root) as repo:
        if keep is None:
            repo.git.reset("-q", "--hard", start)
            repo.git.clean("-q", "-f", "-f", "-d")
            return
        outside = ["--", ":/", f":(top,exclude){keep}"]
        repo.git.reset("-q", start)
        try:
            repo.git.checkout("-q", *outside)
        except git.GitCommandError as exc:
            if "did not match" not in str(exc.stderr):
                raise  # else nothing outside ``keep`` is tracked: nothing to check out
        repo.git.clean("-q", "-f", "-f", "-d", *outside)


@survives_index_lock
def stage_paths(root: Path, paths: list[str]) -> None:
    """Stage exactly these paths (for a commit that holds only the memory file)."""
    with open_repo(root) as repo:
        repo.git.add("--", *paths)


@survives_index_lock
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
        try:
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
        except git.GitCommandError as exc:
            if _index_locked(exc):
                raise
            output = _git_output(exc)
            raise CommitRejected("git refused the commit", output) from None
        return repo.head.commit.hexsha


def staged_paths(root: Path) -> list[str]:
    """Paths with changes staged in the index (against HEAD)."""
    with open_repo(root) as repo:
        out = repo.git.diff("--cached", "--name-only", "-z")
    return [path for path in out.split("\0") if path]


_BLAME_HEADER = re.compile(r"([0-9a-f]{40}) \d+ (\d+)")


def line_commits(root: Path, path: str, lines: list[int]) -> dict[int, str]:
    """The commit that last wrote each of ``lines`` (1-based) of ``path``; uncommitted lines
    and a file never committed have none."""
    if not lines:
        return {}
    ranges = [arg for line in sorted(lines) for arg in ("-L", f"{line},{line}")]
    with open_repo(root) as repo:
        try:
            out = repo.git.blame("--porcelain", *ranges, "--", path)
        except git.GitCommandError:  # no commit yet, or the file never was committed
            return {}
    commits = {}
    for row in out.splitlines():
        header = _BLAME_HEADER.match(row)
        if header and header[1].strip("0"):
            commits[int(header[2])] = header[1]
    return commits


def commit_trailers(root: Path, branch: str | None) -> list[tuple[int, bool]]:
    """(commit time, made by ralph) of every commit on ``branch`` (else HEAD), oldest first
    in topological order; ralph's commits carry a Ralph-Task or Ralph-Learnings trailer."""
    trailers = f"key={TASK_TRAILER},key={LEARNINGS_TRAILER},valueonly"
    with open_repo(root) as repo:
        heads = {head.name for head in repo.heads}
        rev = branch if branch in heads else "HEAD"
        if rev == "HEAD" and not repo.head.is_valid():
            return []
        out = repo.git.log(
            rev, "--topo-order", "--reverse", f"--format=%ct%x09%(trailers:{trailers})%x00"
        )
    commits = []
    for entry in out.split("\0"):
        stamp, _, found = entry.strip("\n").partition("\t")
        if stamp:
            commits.append((int(stamp), bool(found.strip())))
    return commits


def _git_output(exc: git.GitCommandError) -> str:
    """What git printed, without the quoting GitPython wraps it in."""
    parts = []
    for raw in (exc.stdout, exc.stderr):
        text = str(raw or "").strip()
        match = re.fullmatch(r"(?:stdout|stderr):\s*'(.*)'", text, re.DOTALL)
        parts.append(match.group(1) if match else text)
    return "\n".join(part for part in parts if part).strip()


def task_message(title: str, trailers: dict[str, str]) -> str:
    """A commit message: one-line subject, blank line, trailers."""
    subject = " ".join(title.split()) or "ralph task"
    lines = [f"{key}: {value}" for key, value in trailers.items()]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


def trailers_of(root: Path, commits: list[str]) -> dict[str, dict[str, str]]:
    """The ``Ralph-*`` trailers of each of ``commits`` (full ids), read with one ``git log``:
    commit id -> trailer key -> value (the last one when a key repeats). A commit that is
    not there (history rewritten since) is left out."""
    unique = list(dict.fromkeys(commits))
    if not unique:
        return {}
    with open_repo(root) as repo:
        try:
            out = repo.git.log(
                "--no-walk=unsorted", "--format=%H%x1f%(trailers:only,unfold)%x1e", *unique
            )
        except git.GitCommandError:
            # One missing commit fails the whole log; ask for each alone instead.
            each = {sha: _trailers_of_one(repo, sha) for sha in unique}
            return {sha: trailers for sha, trailers in each.items() if trailers}
    found: dict[str, dict[str, str]] = {}
    for entry in out.split("\x1e"):
        sha, _, trailers = entry.strip("\n").partition("\x1f")
        if sha:
            found[sha] = _ralph_trailers(trailers)
    return found


def _trailers_of_one(repo: git.Repo, sha: str) -> dict[str, str]:
    try:
        out = repo.git.log("--no-walk", "--format=%(trailers:only,unfold)", sha)
    except git.GitCommandError:
        return {}
    return _ralph_trailers(out)


def _ralph_trailers(text: str) -> dict[str, str]:
    trailers = {}
    for line in text.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.startswith("Ralph-"):
            trailers[key.strip()] = value.strip()
    return trailers
