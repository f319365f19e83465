"""Child processes: the only place that starts, signals and reaps them.

Every child gets its own session (so its process group is ours to signal), its output
streamed to a size-capped log, and a bounded stop: SIGTERM to the group, ``grace``
seconds, SIGKILL to the group. anyio's own timeouts would kill only the direct child.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import anyio
from anyio.abc import ByteReceiveStream, Process

TAIL_BYTES = 16 * 1024
_POLL = 0.05
PR_SET_CHILD_SUBREAPER = 36
LINUX = sys.platform.startswith("linux")

Outcome = Literal["exited", "timeout", "stopped"]


class Stop:
    """Shared stop state: signals and deadlines only set it; the loop and the runners act on it."""

    def __init__(self) -> None:
        self.requested = anyio.Event()
        self.forced = anyio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        """First call asks for a graceful stop; a second one skips the waiting."""
        if self.requested.is_set():
            self.forced.set()
            return
        self.reason = reason
        self.requested.set()

    @property
    def is_requested(self) -> bool:
        return self.requested.is_set()


@dataclass(frozen=True)
class ProcessResult:
    """How a child process ended and what it printed."""

    outcome: Outcome
    exit_code: int | None
    duration: float
    output_bytes: int
    tail: str

    @property
    def ok(self) -> bool:
        return self.outcome == "exited" and self.exit_code == 0


class CappedLog:
    """Writes the first ``cap`` bytes of a stream to a file and remembers its last bytes.

    Memory stays constant whatever the child prints; the file ends with the tail when
    the middle had to be dropped.
    """

    def __init__(self, path: Path, cap: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("wb")
        self._cap = cap
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self.total = 0

    def write(self, chunk: bytes) -> None:
        room = self._cap - self.total
        if room > 0:
            self._file.write(chunk[:room])
        self.total += len(chunk)
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail[0]) >= TAIL_BYTES:
            self._tail_size -= len(self._tail.popleft())

    def tail(self) -> str:
        data = b"".join(self._tail)[-TAIL_BYTES:]
        return data.decode("utf-8", errors="replace")

    def close(self) -> None:
        if self.total > self._cap:
            dropped = self.total - self._cap
            self._file.write(
                f"\n[... {dropped} bytes not kept; the last bytes follow ...]\n".encode()
            )
            self._file.write(b"".join(self._tail)[-TAIL_BYTES:])
        self._file.close()


async def run_in_group(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    grace: float,
    stop: Stop,
    stdin: Path | None = None,
    log_cap: int = 8 * 1024 * 1024,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` in its own session until it exits, times out or a stop is requested.

    Whatever way it ends, no process of its group is left when this returns.
    """
    started = time.monotonic()
    log = CappedLog(log_path, log_cap)
    stdin_file = stdin.open("rb") if stdin is not None else None
    try:
        proc = await anyio.open_process(
            _with_parent_death_signal(list(argv)),
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        log.write(f"cannot start {argv[0]}: {exc.strerror or exc}\n".encode())
        log.close()
        if stdin_file is not None:
            stdin_file.close()
        return ProcessResult("exited", 127, 0.0, log.total, log.tail())
    if on_start is not None:
        on_start(proc.pid)
    try:
        outcome = await _supervise(proc, log, timeout, grace, stop)
    finally:
        with anyio.CancelScope(shield=True):
            await _reap(proc)
            log.close()
            if stdin_file is not None:
                stdin_file.close()
    exit_code = proc.returncode if outcome == "exited" else None
    return ProcessResult(outcome, exit_code, time.monotonic() - started, log.total, log.tail())


async def _supervise(
    proc: Process, log: CappedLog, timeout: float, grace: float, stop: Stop
) -> Outcome:
    drained = anyio.Event()
    async with anyio.create_task_group() as group:
        assert proc.stdout is not None
        group.start_soon(_drain, proc.stdout, log, drained)
        outcome = await _wait_for_exit(proc, timeout, stop)
        await stop_tree(proc.pid, grace, stop.forced)
        # A daemon that escaped the group may still hold the pipe: don't wait for it forever.
        with anyio.move_on_after(2):
            await drained.wait()
        group.cancel_scope.cancel()
    return outcome


async def _drain(stream: ByteReceiveStream, log: CappedLog, drained: anyio.Event) -> None:
    try:
        async for chunk in stream:
            log.write(chunk)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the child closed its end: nothing more to read
    finally:
        drained.set()


async def _wait_for_exit(proc: Process, timeout: float, stop: Stop) -> Outcome:
    outcome: Outcome = "timeout"
    async with anyio.create_task_group() as group:

        async def exited() -> None:
            nonlocal outcome
            await proc.wait()
            outcome = "exited"
            group.cancel_scope.cancel()

        async def stopped() -> None:
            nonlocal outcome
            await stop.requested.wait()
            outcome = "stopped"
            group.cancel_scope.cancel()

        group.start_soon(exited)
        group.start_soon(stopped)
        await anyio.sleep(timeout)
        group.cancel_scope.cancel()
    return outcome


async def stop_tree(pgid: int, grace: float, forced: anyio.Event | None = None) -> None:
    """Stop the group and every other process below ralph, within one grace period.

    SIGTERM to all of them, up to ``grace`` seconds (cut short when ``forced`` is set)
    for them to exit, then SIGKILL to whatever is left. A daemon that left the group
    with setsid is below ralph thanks to the subreaper, so it is stopped the same way.
    """
    remaining = functools.partial(anyio.to_thread.run_sync, _remaining, pgid)
    if not await remaining():
        return
    await anyio.to_thread.run_sync(_signal_all, pgid, signal.SIGTERM)
    with anyio.move_on_after(grace):
        while await remaining() and not (forced is not None and forced.is_set()):
            await anyio.sleep(_POLL)
    with anyio.move_on_after(5):
        while await remaining():
            await anyio.to_thread.run_sync(_signal_all, pgid, signal.SIGKILL)
            await anyio.sleep(_POLL)
    await anyio.to_thread.run_sync(reap_orphans)


def _remaining(pgid: int) -> set[int]:
    """Live processes of the group and, on Linux, every live descendant of ralph."""
    if not LINUX:
        return {pgid} if group_alive(pgid) else set()
    table = _proc_table()  # one pass over /proc serves both questions
    live = [row for row in table if row[3] not in (b"Z", b"X")]
    members = {pid for pid, _ppid, pgrp, _state in live if pgrp == pgid}
    return members | set(_descendants_in(live, os.getpid()))


def _signal_all(pgid: int, sig: signal.Signals) -> None:
    _signal_group(pgid, sig)
    for pid in _remaining(pgid):
        _signal_pid(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is already gone
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """True while any process of the group is running (zombies don't count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``, read from /proc."""
    return [
        pid
        for pid, _ppid, pgrp, state in _proc_table()
        if pgrp == pgid and state not in (b"Z", b"X")
    ]


async def _reap(proc: Process) -> None:
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGKILL)
    with anyio.move_on_after(5):
        await proc.wait()
    await proc.aclose()


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """On Linux, start ``argv`` so that it gets SIGKILL if ralph dies.

    util-linux's ``setpriv`` does it for about a millisecond; without it, ralph's own
    ``ralph.launch`` shim (a Python start, ~30 ms) does the same and also closes the
    small window in which ralph could die before the signal is armed.
    """
    if not LINUX:
        return argv
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    return [sys.executable, "-I", "-m", "ralph.launch", str(os.getpid()), "--", *argv]


_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin") if LINUX else None


def become_subreaper() -> bool:
    """Make orphaned descendants (double-forked daemons) children of ralph, not of init.

    Then nothing an agent starts can slip out of reach: stop_tree finds it.
    """
    if not LINUX:
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def descendants(root_pid: int) -> list[int]:
    """Live processes below ``root_pid`` in the process tree, read from /proc.

    Between two children ralph has none, so anything found after a child ended was
    started by it and must go.
    """
    live = [row for row in _proc_table() if row[3] not in (b"Z", b"X")]
    return _descendants_in(live, root_pid)


def _descendants_in(table: list[tuple[int, int, int, bytes]], root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid, _pgrp, _state in table:
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    queue = list(children.get(root_pid, []))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def reap_orphans() -> None:
    """Collect the exit status of orphans the subreaper made ours, so no zombie stays."""
    me = os.getpid()
    for pid, ppid, _pgrp, state in _proc_table():
        if ppid == me and state == b"Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def processes_with_env(needle: bytes) -> list[int]:
    """Processes whose environment holds ``needle`` (``NAME=value``), other than ralph."""
    found = []
    for pid, _ppid, _pgrp, state in _proc_table():
        if state in (b"Z", b"X") or pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found.append(pid)
    return found


def kill_now(pids: Sequence[int]) -> None:
    """SIGKILL each of ``pids`` (left behind by a killed ralph)."""
    for pid in pids:
        _signal_pid(pid, signal.SIGKILL)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _proc_table() -> list[tuple[int, int, int, bytes]]:
    """(pid, ppid, process group, state) of every process, from /proc/<pid>/stat."""
    table = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        table.append((int(entry.name), int(fields[1]), int(fields[2]), fields[0]))
    return table
