"""Trees, worktrees and commits, through git's plumbing: what gets checked is what gets committed.

An attempt's change is read from its worktree into a private index (so index flags an agent
set don't matter), written as a tree, and judged and checked as that tree; the commit is made
from the same tree with the start commit as its only parent (so MERGE_HEAD, grafts or a
forged shallow file don't matter). Checks run in a checkout of exactly that tree.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ralph.runtime.atomic import bytes_under
from ralph.vcs.gitenv import Git, GitFailed

_WORKTREES = threading.RLock()
"""Held while git adds, removes or prunes worktrees: ``git worktree prune`` run by one worker
while another's ``git worktree add`` is half done deletes the new worktree's record."""

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
GITLINK = "160000"
SYMLINK = "120000"
_FALLBACK_IDENTITY = ("ralph", "ralph@localhost")


@dataclass(frozen=True)
class Entry:
    """One path the change touches, as ``git diff-tree --raw`` says: modes and status."""

    status: str  # A, M, D, T (type change)
    path: str
    old_mode: str
    new_mode: str
    new_object: str


# --- ralph's worktrees --------------------------------------------------------------------


def prepare_worktree(main: Git, path: Path, commit: str) -> Git:
    """A worktree of ralph's at ``path``, detached at ``commit``, with tracked and untracked
    files exactly as in ``commit``; ignored files (caches) are left where they are.

    Created when missing, repaired when its ``.git`` file or git's record of it is gone,
    reused otherwise. Its index is rebuilt from scratch: whatever flags an agent set in it
    are gone. The returned git names the worktree's git directory explicitly.
    """
    with _WORKTREES:
        admin = worktree_admin(main, path)
        if admin is None:
            if path.exists() or path.is_symlink():
                _remove(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            main.run("worktree", "prune")
            main.run("worktree", "add", "--detach", "--force", "--no-checkout", str(path), commit)
            admin = worktree_admin(main, path)
            if admin is None:
                raise GitFailed(["worktree", "add"], 1, f"git made no worktree at {path}")
    repair_dot_git(path, admin)
    tree = main.at(path, admin)
    reset_worktree(tree, commit, clean_ignored=False)
    return tree


def worktree_admin(main: Git, path: Path) -> Path | None:
    """The git directory git keeps for the worktree at ``path`` (``<common>/worktrees/<n>``),
    found from git's side (its ``gitdir`` file), never from the worktree's ``.git`` file."""
    common = Path(main.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip())
    wanted = str(path / ".git")
    folder = common / "worktrees"
    for admin in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            if (admin / "gitdir").read_text().strip() == wanted:
                return admin
        except OSError:
            continue
    return None


def repair_dot_git(path: Path, admin: Path) -> None:
    """Put the worktree's ``.git`` file back as git wrote it, whatever the agent did to it."""
    dot_git = path / ".git"
    wanted = f"gitdir: {admin}\n"
    try:
        if dot_git.is_file() and not dot_git.is_symlink() and dot_git.read_text() == wanted:
            return
    except OSError:
        pass
    if dot_git.is_dir() and not dot_git.is_symlink():
        shutil.rmtree(dot_git)
    else:
        dot_git.unlink(missing_ok=True)
    path.mkdir(parents=True, exist_ok=True)
    dot_git.write_text(wanted)


def reset_worktree(
    tree: Git, commit: str, *, clean_ignored: bool, keep: Sequence[str] = ()
) -> None:
    """Make the worktree hold exactly ``commit`` (tracked and untracked files), HEAD detached
    there. ``clean_ignored``: ignored files go too, except the paths in ``keep``."""
    index = Path(tree.run("rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    index.unlink(missing_ok=True)
    tree.run("read-tree", "--reset", "-u", commit)
    sha = tree.run("rev-parse", f"{commit}^{{commit}}").strip()
    tree.run("update-ref", "--no-deref", "HEAD", sha)
    clean = ["clean", "-f", "-f", "-d", "-q"]
    if clean_ignored:
        clean += ["-x", *[f"--exclude=/{path.strip('/')}" for path in keep]]
    tree.run(*clean)


def worktree_git(main: Git, path: Path) -> Git:
    """git for ralph's worktree at ``path`` with its git directory named explicitly (as
    prepared by prepare_worktree); plain discovery when git has no record of it."""
    admin = worktree_admin(main, path)
    return main.at(path, admin)


def remove_worktree(main: Git, path: Path) -> None:
    """Remove one of ralph's worktrees, files and registration."""
    with _WORKTREES:
        main.run("worktree", "remove", "--force", "--force", str(path), check=False)
        if path.exists():
            _remove(path)
        main.run("worktree", "prune")


def prune_worktrees(main: Git) -> None:
    """git forgets worktrees whose folders are gone (never one another worker is adding)."""
    with _WORKTREES:
        main.run("worktree", "prune")


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def copy_index(tree: Git, dest: Path) -> None:
    """Keep a copy of the worktree's index as ralph made it, before an agent can touch it:
    building the change's tree from it only re-reads the files that changed."""
    index = Path(tree.run("rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    shutil.copyfile(index, dest)


def dirty_paths(git: Git, under: str | None = None) -> list[str]:
    """Tracked changes and untracked files in git's work tree, as ``git status`` lists them
    (ignored ones not), run ralph's way: no hook, no fsmonitor an agent planted."""
    pathspec = ["--", f":(top){under}"] if under else []
    out = git.run("status", "--porcelain=v1", "-z", "--untracked-files=all", *pathspec)
    return status_paths(out)


def status_paths(out: str) -> list[str]:
    """The paths of ``git status --porcelain=v1 -z`` output (of a rename, the new one)."""
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


# --- the change as a tree -----------------------------------------------------------------


def tree_of_worktree(tree: Git, base_index: Path, index: Path) -> str:
    """The tree of everything in the worktree as ``git add -A`` sees it, read into a private
    index started from ``base_index`` (ralph's own copy); returns the tree's id."""
    if base_index.is_file():
        shutil.copyfile(base_index, index)
    else:
        index.unlink(missing_ok=True)
        tree.run("read-tree", "HEAD", index=index)
    tree.run("add", "-A", "--", ".", index=index)
    return tree.run("write-tree", index=index).strip()


def entries(git: Git, old: str, new: str) -> list[Entry]:
    """What changed from tree-ish ``old`` to ``new``: every path with its modes."""
    out = git.run("diff-tree", "-r", "-z", "--no-renames", "--raw", old, new)
    parts = out.split("\0")
    found: list[Entry] = []
    for meta, path in zip(parts[::2], parts[1::2], strict=False):
        if not meta:
            continue
        old_mode, new_mode, _old_id, new_id, status = meta.lstrip(":").split(" ")
        found.append(Entry(status[0], path, old_mode, new_mode, new_id))
    return found


def symlink_leaves_tree(git: Git, entry: Entry) -> bool:
    """Whether a symlink in the change points outside the repository."""
    target = git.run("cat-file", "blob", entry.new_object)
    if target.startswith("/"):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
    return joined == ".." or joined.startswith("../")


def with_file(git: Git, tree: str, path: str, content: bytes, index: Path) -> str:
    """``tree`` with ``path`` holding ``content`` (a regular file): a new tree's id."""
    blob = git.run("hash-object", "-w", "--stdin", "--no-filters", input=content).strip()
    index.unlink(missing_ok=True)
    git.run("read-tree", tree, index=index)
    git.run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", index=index)
    return git.run("write-tree", index=index).strip()


def file_at(git: Git, treeish: str, path: str) -> bytes | None:
    """The content of ``path`` in ``treeish``, or None when it isn't there."""
    if git.status("cat-file", "-e", f"{treeish}:{path}") != 0:
        return None
    return git.run_bytes("cat-file", "blob", f"{treeish}:{path}")


def tree_of(git: Git, commit: str) -> str:
    return git.run("rev-parse", f"{commit}^{{tree}}").strip()


def commit_tree(git: Git, tree: str, parents: Sequence[str], message: str) -> str:
    """A commit of exactly ``tree`` on ``parents`` with ``message``; no hook runs.

    A repository without an identity gets ``ralph <ralph@localhost>``.
    """
    args = ["commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    identity = []
    if not _has_identity(git):
        name, email = _FALLBACK_IDENTITY
        identity = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
    return git.run(*identity, *args, input=message.encode("utf-8")).strip()


def _has_identity(git: Git) -> bool:
    name = git.run("config", "user.name", check=False).strip()
    email = git.run("config", "user.email", check=False).strip()
    return bool(name and email)


def replay(git: Git, base: str, change: str, onto: str) -> str | None:
    """``change`` (a commit on ``base``) replayed onto ``onto``: the merged tree, or None on a
    conflict or when ``base`` is no longer in ``onto``'s history (the branch was rewritten)."""
    if git.status("merge-base", "--is-ancestor", base, onto, history=True) != 0:
        return None
    done = subprocess.run(
        ["git", "merge-tree", "--write-tree", "--no-messages", onto, change],
        cwd=git.cwd,
        env=git.env.environment(),
        capture_output=True,
        check=False,
    )
    if done.returncode == 1:
        return None
    if done.returncode != 0:
        raise GitFailed(["merge-tree"], done.returncode, done.stderr.decode("utf-8", "replace"))
    return done.stdout.decode().split("\n", 1)[0].strip()


# --- what a failed attempt leaves ---------------------------------------------------------


def save_diff(git: Git, old: str, new: str, dest: Path, cap: int) -> bool:
    """Write the change from ``old`` to ``new`` as a binary patch into ``dest``, streamed to
    disk and cut at ``cap`` bytes (git is stopped there; a note says so). Returns True when
    it was cut."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    with _open_new(partial) as handle:
        total = git.stream_capped(
            "diff", "--binary", "--no-ext-diff", "--no-textconv", old, new, into=handle, cap=cap
        )
        if total > cap:
            handle.write(
                f"\n[... the rest not kept: the diff is cut at {cap} bytes ...]\n".encode()
            )
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        dest.replace(dest.with_name(f"{dest.name}.planted-{os.getpid()}-{time.time_ns()}"))
    partial.replace(dest)
    return total > cap


def save_nested_repositories(
    worktree: Path, paths: Sequence[str], dest: Path, cap: int
) -> list[str]:
    """Keep nested repositories (gitlinks in the change) as a tar file, up to ``cap`` bytes
    of content: a diff holds only their commit id. Returns the paths kept."""
    kept: list[str] = []
    total = 0
    with tarfile.open(dest, "w") as archive:
        for path in paths:
            source = worktree / path
            if not source.is_dir() or source.is_symlink():
                continue
            size = bytes_under(source)
            if total + size > cap:
                continue
            archive.add(source, arcname=path)
            total += size
            kept.append(path)
    return kept


def _open_new(path: Path) -> IO[bytes]:
    """Open ``path`` for writing without following a symlink planted there: whatever is at
    the path and isn't a plain file of its own is moved aside first."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is not None and (not stat.S_ISREG(info.st_mode) or info.st_nlink > 1):
        path.replace(path.with_name(f"{path.name}.planted-{os.getpid()}-{time.time_ns()}"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "wb")
