"""Every git operation ralph makes, through GitPython.

Each function opens the repository, does one thing and closes it again: GitPython
caches processes and memory maps per ``Repo``, which leaks in a long-running daemon.
These functions block; the loop calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import git
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from ralph.errors import RepositoryError

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
GUARDED_GIT_FILES = ("config", "info/exclude", "info/attributes")


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
            if _git_running_in(root):
                raise RepositoryError(
                    f"{lock} is held by a running git process; stop it or remove the lock"
                ) from None
            lock.unlink(missing_ok=True)
            return func(*args, **kwargs)

    return run


def git_dir(root: Path) -> str:
    with open_repo(root) as repo:
        return str(repo.git_dir)


def _git_running_in(root: Path) -> bool:
    """True when a git process other than ours has its working directory in ``root``."""
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
        out = repo.git.status("--porcelain=v1", "-z", "--untracked-files=all", *pathspec)
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


def task_commit_on(root: Path, branch: str, task_id: str, parent: str) -> str | None:
    """The tip of ``branch`` if it is ralph's commit of ``task_id`` made right on ``parent``."""
    with open_repo(root) as repo:
        try:
            tip = repo.commit(f"refs/heads/{branch}")
        except (ValueError, git.BadName):
            return None
        ours = task_id in tip.trailers_dict.get(TASK_TRAILER, [])
        parent_ok = [each.hexsha for each in tip.parents] == [parent]
        return tip.hexsha if ours and parent_ok else None


def done_tasks(root: Path) -> set[str]:
    """Ids of tasks with a ``Ralph-Task`` trailer on a commit reachable from HEAD."""
    return DoneTasks().read(root)


@survives_index_lock
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


@survives_index_lock
def stage_changes(root: Path, start: str, leave_out: str | None = None) -> list[Change]:
    """Stage everything the attempt changed (as ``git add -A`` sees it) and list it.

    ``leave_out`` (the specs folder) is never part of the change: specs the user has
    not committed yet stay theirs, uncommitted.
    """
    with open_repo(root) as repo:
        if leave_out:
            repo.git.add("-A", "--", ":/", f":(top,exclude){leave_out}")
            repo.git.reset("-q", start, "--", f":(top){leave_out}")
        else:
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


def tracked_files(root: Path, commit: str, paths: list[str]) -> list[str]:
    """Which of ``paths`` exist in ``commit``."""
    with open_repo(root) as repo:
        out = repo.git.ls_tree("-r", "--name-only", "-z", commit, "--", *paths)
    return [path for path in out.split("\0") if path]


@survives_index_lock
def checkout_paths(root: Path, commit: str, paths: list[str]) -> None:
    """Put ``paths`` back as they are in ``commit``."""
    with open_repo(root) as repo:
        repo.git.checkout("-q", commit, "--", *paths)


@survives_index_lock
def restore_paths(root: Path, commit: str, paths: list[str]) -> None:
    """Put ``paths`` back as they are in ``commit``: removed if they aren't in it."""
    present = set(tracked_files(root, commit, paths))
    with open_repo(root) as repo:
        repo.git.reset("-q", commit, "--", *paths)
    if present:
        checkout_paths(root, commit, sorted(present))
    for path in set(paths) - present:
        (root / path).unlink(missing_ok=True)


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


@dataclass(frozen=True)
class GitSnapshot:
    """What an attempt must leave as it was under .git/: refs, hooks, config, excludes."""

    refs: dict[str, str]
    files: dict[str, bytes | None]
    hooks: dict[str, tuple[bytes, int]]


def snapshot_to_json(snapshot: GitSnapshot) -> dict[str, object]:
    """A JSON-ready form, so recovery after a crash can restore .git too."""
    return {
        "refs": snapshot.refs,
        "files": {
            name: None if data is None else base64.b64encode(data).decode()
            for name, data in snapshot.files.items()
        },
        "hooks": {
            name: [base64.b64encode(data).decode(), mode]
            for name, (data, mode) in snapshot.hooks.items()
        },
    }


def snapshot_from_json(raw: dict[str, Any]) -> GitSnapshot:
    """The inverse of snapshot_to_json."""
    return GitSnapshot(
        refs=dict(raw["refs"]),
        files={
            name: None if data is None else base64.b64decode(data)
            for name, data in raw["files"].items()
        },
        hooks={
            name: (base64.b64decode(data), int(mode)) for name, (data, mode) in raw["hooks"].items()
        },
    )


def snapshot_git(root: Path) -> GitSnapshot:
    """Record refs, guarded files and hooks before the agent starts."""
    with open_repo(root) as repo:
        common = Path(repo.common_dir)
        hooks_dir = Path(repo.git_dir) / "hooks"
        refs = _refs(repo)
    files = {name: _read_or_none(common / name) for name in GUARDED_GIT_FILES}
    hooks = {}
    if hooks_dir.is_dir():
        for path in sorted(hooks_dir.iterdir()):
            if path.is_file():
                hooks[path.name] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return GitSnapshot(refs, files, hooks)


def restore_git(root: Path, before: GitSnapshot, branch: str) -> list[str]:
    """Put refs, guarded files and hooks back; return what the agent had tampered with.

    Refs the agent created (branches, tags, a stash) are deleted and refs it moved are
    put back; those are history, folded into the change, not tampering. Changed hooks,
    config or excludes are tampering: they are restored and reported.
    """
    after = snapshot_git(root)
    with open_repo(root) as repo:
        _restore_refs(repo, before.refs, after.refs, keep=f"refs/heads/{branch}")
        common = Path(repo.common_dir)
        hooks_dir = Path(repo.git_dir) / "hooks"
    tampered = []
    for name, content in before.files.items():
        if after.files[name] != content:
            tampered.append(f".git/{name}")
            _write_or_remove(common / name, content)
    if after.hooks != before.hooks:
        tampered.append(".git/hooks")
        _restore_hooks(hooks_dir, before.hooks, after.hooks)
    return tampered


def _restore_refs(repo: git.Repo, before: dict[str, str], after: dict[str, str], keep: str) -> None:
    for ref, sha in after.items():
        if ref == keep or before.get(ref) == sha:
            continue
        if ref in before:
            repo.git.update_ref(ref, before[ref])
        else:
            repo.git.update_ref("-d", ref)
    for ref, sha in before.items():
        if ref not in after:
            repo.git.update_ref(ref, sha)


def _restore_hooks(
    hooks_dir: Path, before: dict[str, tuple[bytes, int]], after: dict[str, tuple[bytes, int]]
) -> None:
    for name in after.keys() - before.keys():
        (hooks_dir / name).unlink(missing_ok=True)
    for name, (content, mode) in before.items():
        (hooks_dir / name).write_bytes(content)
        (hooks_dir / name).chmod(mode)


def _refs(repo: git.Repo) -> dict[str, str]:
    out = repo.git.for_each_ref("--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_or_remove(path: Path, content: bytes | None) -> None:
    if content is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def ignored_files(root: Path, globs: list[str]) -> set[str]:
    """Ignored (so never staged) files matching ``globs``: a way to slip files past the gate."""
    pathspecs = [f":(glob){glob.strip('/')}" for glob in globs]
    with open_repo(root) as repo:
        out = repo.git.ls_files(
            "--others", "--ignored", "--exclude-standard", "-z", "--", *pathspecs
        )
    return {path for path in out.split("\0") if path}
