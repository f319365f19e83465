"""One ralph per repository: ``flock`` on ``.ralph/lock`` and on the git directory itself.

The kernel drops a lock when its holder dies, even by SIGKILL, so a stale lock can't keep
ralph out. The lock on ``.ralph/lock`` is the one people see (its file holds the pid); the
one on the repository's git directory is held on an open descriptor of a folder that can't
be deleted without deleting the repository, so removing ``.ralph/`` while a ralph runs
doesn't let a second one in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from ralph.errors import LockHeld


class RepoLock:
    """Held for the whole of ``ralph run``; a second holder gets LockHeld (exit 75)."""

    def __init__(self, path: Path, git_dir: Path | None = None) -> None:
        self.path = path
        self.git_dir = git_dir
        self._handle: IO[str] | None = None
        self._dir_fd: int | None = None

    def __enter__(self) -> RepoLock:
        self._lock_file()
        if self.git_dir is not None:
            self._dir_fd = os.open(self.git_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._dir_fd)
                self._dir_fd = None
                self._release_file()
                raise LockHeld(
                    f"another ralph holds {self.git_dir} ({self.path} was removed while it ran)"
                ) from None
        return self

    def _lock_file(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = os.fdopen(fd, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise LockHeld(f"another ralph (pid {holder}) holds {self.path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def _release_dir(self) -> None:
        if self._dir_fd is not None:
            fcntl.flock(self._dir_fd, fcntl.LOCK_UN)
            os.close(self._dir_fd)
            self._dir_fd = None

    def _release_file(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release_file()
        self._release_dir()


def _pid_in(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        text = path.read_text()[:32].strip()
        return text if text.isdigit() else None
    return None


def lock_holder(path: Path, git_dir: Path | None = None) -> int | None:
    """The pid of the ralph holding the lock (-1 when unknown), or None when nobody does."""
    if git_dir is not None and git_dir.is_dir():
        fd = os.open(git_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            pid = _pid_in(path)
            return int(pid) if pid else -1
        finally:
            os.close(fd)
    if not path.exists():
        return None
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
