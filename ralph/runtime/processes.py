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
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from ralph.runtime import cgroups

TAIL_BYTES = 16 * 1024
_POLL = 0.05
PR_SET_CHILD_SUBREAPER = 36
LINUX = sys.platform.startswith("linux")

Outcome = Literal["exited", "timeout", "stopped", "halted", "stalled"]
"""``halted``: an ``OutputWatch`` asked for the stop (what the child printed said so);
``stalled``: the watch heard nothing from the child for its ``stall`` seconds."""
Heard = Literal["nothing", "life", "halt"]
"""What one line of a watched child's output says: nothing ralph reads, a sign of life, or
that the child must be stopped now."""


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


class OutputWatch:
    """Reads a child's output line by line while it runs, in bounded memory.

    ``on_line`` gets each complete line (without its newline), or its first ``max_line + 1``
    bytes when it is longer, and says what it heard. A line that says ``halt`` stops the
    child (outcome ``halted``); with ``stall`` set, a child that says nothing ``on_line``
    calls a sign of life for that many seconds is stopped too (outcome ``stalled``). A
    fault in ``on_line`` is logged once and never stops the child or its log.
    """

    def __init__(
        self, on_line: Callable[[bytes], Heard], *, max_line: int, stall: float | None = None
    ) -> None:
        self.on_line = on_line
        self.max_line = max_line
        self.stall = stall
        self.halt = anyio.Event()
        self.heard_at = time.monotonic()
        self._line = bytearray()
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        """Take a chunk of output; hear every line it completes."""
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            room = self.max_line + 1 - len(self._line)
            if room > 0:
                self._line += piece[:room]
            if end < 0:
                return
            self._hear()
            start = end + 1

    def finish(self) -> None:
        """The output ended: hear a last line that had no newline."""
        if self._line:
            self._hear()

    def _hear(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if self._broken:
            return
        try:
            heard = self.on_line(line)
        except Exception:  # a reader's fault must not cost the attempt
            self._broken = True
            structlog.get_logger().exception("ralph.output_watch_failed")
            return
        if heard != "nothing":
            self.heard_at = time.monotonic()
        if heard == "halt":
            self.halt.set()


class CappedLog:
    """Writes the first ``cap`` bytes of a stream to a file and remembers its last bytes.

    Memory stays constant whatever the child prints; the file ends with the tail when
    the middle had to be dropped. The log lives in an attempt's folder, which the agent can
    write: whatever it planted at the log's path (a symlink, a hard link to another file, a
    FIFO) is moved aside, and the log is a new file of ralph's, never written through it.
    """

    def __init__(self, path: Path, cap: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = os.fdopen(self._open(path), "wb")
        self._cap = cap
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self.total = 0

    @staticmethod
    def _open(path: Path) -> int:
        """A descriptor on an empty plain file at ``path`` that only ralph's log links to."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        for _ in range(5):
            try:
                fd = os.open(path, flags, 0o644)
            except OSError:
                if not (path.is_symlink() or path.exists()):
                    raise
                CappedLog._move_aside(path)
                continue
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                os.set_blocking(fd, True)
                os.ftruncate(fd, 0)
                return fd
            os.close(fd)
            CappedLog._move_aside(path)
        raise OSError(f"{path}: something keeps replacing this log")

    @staticmethod
    def _move_aside(path: Path) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = path.with_name(f"{path.name}.planted-{stamp}-{time.monotonic_ns()}")
        os.replace(path, aside)
        structlog.get_logger("ralph").warning(
            "ralph.path_set_aside", path=str(path), kept_at=str(aside), found="not ralph's log"
        )

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


_SUPERVISED: set[int] = set()
"""Children run_in_group is supervising right now (their pids). Module-wide on purpose: it
describes this process's own children, as the kernel's process table does."""


@dataclass
class ProcessTree:
    """Every process one child started, found again however it tried to leave.

    With a cgroup (``ralph.runtime.cgroups``) the kernel keeps the list. Without one: the
    child's process group, its descendants, and every process ever seen among them (pid and
    start time, sampled while it runs), plus any process whose environment holds ``marker``.
    """

    cgroup: Path | None = None
    marker: bytes | None = None
    seen: dict[int, int] = field(default_factory=dict)
    root: int | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        return cgroups.enter_argv(self.cgroup, argv) if self.cgroup is not None else argv

    def sample(self) -> bool:
        """Remember the processes in the tree now; True when one was new."""
        if self.root is None:
            return False
        table = _proc_table()
        live = {pid: start for pid, start in self._live(table).items()}
        new = {pid: start for pid, start in live.items() if self.seen.get(pid) != start}
        self.seen.update(new)
        return bool(new)

    def live(self) -> set[int]:
        """The processes of the tree that still run."""
        return set(self._live(_proc_table(), with_marker=True))

    def _live(self, table: list[_Row], with_marker: bool = False) -> dict[int, int]:
        running = {row.pid: row for row in table if row.state not in (b"Z", b"X")}
        found: set[int] = set()
        if self.cgroup is not None:
            found.update(pid for pid in cgroups.members(self.cgroup) if pid in running)
        elif {self.root} == _SUPERVISED:
            # No cgroup, and this is the only child ralph supervises: whatever was orphaned
            # onto ralph (the subreaper) came from it, however fast it re-spawns or whatever
            # it did to its session and environment. Not ralph's own git and other helpers,
            # run meanwhile by other workers or the loop: they are in ralph's session, which
            # no process of the child's (started in a session of its own) can ever rejoin.
            own = os.getsid(0)
            found.update(
                pid
                for pid in _descendants_in(list(running.values()), os.getpid())
                if running[pid].session != own
            )
        if self.root is not None:
            found.update(pid for pid, row in running.items() if row.pgrp == self.root)
            found.update(_descendants_in(list(running.values()), self.root))
            if self.root in running:
                found.add(self.root)
        found.update(
            pid
            for pid, start in self.seen.items()
            if pid in running and running[pid].start == start
        )
        if with_marker and self.marker is not None:
            found.update(processes_with_env(self.marker))
        found.discard(os.getpid())
        return {pid: running[pid].start for pid in found if pid in running}


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
    tree: ProcessTree | None = None,
    on_sample: Callable[[ProcessTree], None] | None = None,
    watch: OutputWatch | None = None,
) -> ProcessResult:
    """Run ``argv`` in its own session until it exits, times out, a stop is requested, or
    ``watch`` halts it or finds it stalled.

    Whatever way it ends, no process of its tree is left when this returns. ``on_sample``
    is told each time new processes were seen in the tree (to record them for recovery).
    """
    started = time.monotonic()
    tree = tree or ProcessTree()
    log = CappedLog(log_path, log_cap)
    stdin_file = stdin.open("rb") if stdin is not None else None
    try:
        proc = await anyio.open_process(
            tree.wrap(_with_parent_death_signal(list(argv))),
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
    tree.root = proc.pid
    _SUPERVISED.add(proc.pid)
    if on_start is not None:
        on_start(proc.pid)
    if watch is not None:
        watch.heard_at = time.monotonic()
    try:
        outcome = await _supervise(proc, log, (timeout, grace), (stop, watch), (tree, on_sample))
    finally:
        _SUPERVISED.discard(proc.pid)
        with anyio.CancelScope(shield=True):
            await _reap(proc)
            log.close()
            if stdin_file is not None:
                stdin_file.close()
    exit_code = proc.returncode if outcome == "exited" else None
    return ProcessResult(outcome, exit_code, time.monotonic() - started, log.total, log.tail())


async def _supervise(
    proc: Process,
    log: CappedLog,
    limits: tuple[float, float],
    stops: tuple[Stop, OutputWatch | None],
    watched: tuple[ProcessTree, Callable[[ProcessTree], None] | None],
) -> Outcome:
    timeout, grace = limits
    stop, watch = stops
    tree, on_sample = watched
    drained = anyio.Event()
    async with anyio.create_task_group() as group:
        assert proc.stdout is not None
        group.start_soon(_drain, proc.stdout, log, drained, watch)
        group.start_soon(_watch_tree, tree, on_sample)
        outcome = await _wait_for_exit(proc, timeout, stop, watch)
        await stop_tree(tree, grace, stop.forced)
        # A daemon that escaped the group may still hold the pipe: don't wait for it forever.
        with anyio.move_on_after(2):
            await drained.wait()
        group.cancel_scope.cancel()
    return outcome


SAMPLE_EVERY = 0.25


async def _watch_tree(tree: ProcessTree, on_sample: Callable[[ProcessTree], None] | None) -> None:
    """Sample the tree while the child runs, so a process that leaves it is still known."""
    while True:
        if await anyio.to_thread.run_sync(tree.sample) and on_sample is not None:
            await anyio.to_thread.run_sync(on_sample, tree)
        await anyio.sleep(SAMPLE_EVERY)


async def _drain(
    stream: ByteReceiveStream, log: CappedLog, drained: anyio.Event, watch: OutputWatch | None
) -> None:
    try:
        async for chunk in stream:
            log.write(chunk)
            if watch is not None:
                watch.feed(chunk)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the child closed its end: nothing more to read
    finally:
        if watch is not None:
            watch.finish()
        drained.set()


async def _wait_for_exit(
    proc: Process, timeout: float, stop: Stop, watch: OutputWatch | None = None
) -> Outcome:
    waiters: list[tuple[Outcome, Callable[[], Awaitable[object]]]] = [
        ("exited", proc.wait),
        ("stopped", stop.requested.wait),
    ]
    if watch is not None:
        waiters.append(("halted", watch.halt.wait))
        if watch.stall is not None:
            waiters.append(("stalled", functools.partial(_stalled, watch, watch.stall)))
    outcome: Outcome = "timeout"
    async with anyio.create_task_group() as group:

        async def until(ending: Outcome, wait: Callable[[], Awaitable[object]]) -> None:
            nonlocal outcome
            await wait()
            outcome = ending
            group.cancel_scope.cancel()

        for ending, wait in waiters:
            group.start_soon(until, ending, wait)
        await anyio.sleep(timeout)
        group.cancel_scope.cancel()
    if outcome == "timeout" and _has_exited(proc.pid):
        # ralph itself was stopped (SIGSTOP, a suspended VM) past the timeout, and the child
        # finished in the meantime: that is not the child's timeout.
        with anyio.move_on_after(2):
            await proc.wait()
        outcome = "exited" if proc.returncode is not None else outcome
    return outcome


async def _stalled(watch: OutputWatch, stall: float) -> None:
    """Return once the watch has heard no sign of life for ``stall`` seconds."""
    while True:
        while (left := watch.heard_at + stall - time.monotonic()) > 0:
            await anyio.sleep(left)
        # Output may wait in the pipe unread (ralph itself was suspended): read it first.
        await anyio.sleep(_POLL)
        if watch.heard_at + stall <= time.monotonic():
            return


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has ended (a zombie waiting to be reaped, or gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


async def stop_tree(tree: ProcessTree, grace: float, forced: anyio.Event | None = None) -> None:
    """Stop every process of the tree within one grace period.

    SIGTERM to all of them, up to ``grace`` seconds (cut short when ``forced`` is set)
    for them to exit, then SIGKILL to whatever is left (the whole cgroup at once, when there
    is one).
    """
    remaining = functools.partial(anyio.to_thread.run_sync, tree.live)
    if not await remaining():
        return
    await anyio.to_thread.run_sync(_signal_tree, tree, signal.SIGTERM)
    with anyio.move_on_after(grace):
        while await remaining() and not (forced is not None and forced.is_set()):
            await anyio.sleep(_POLL)
    if tree.cgroup is not None:
        await anyio.to_thread.run_sync(cgroups.kill, tree.cgroup)
    with anyio.move_on_after(5):
        while await remaining():
            await anyio.to_thread.run_sync(_signal_tree, tree, signal.SIGKILL)
            await anyio.sleep(_POLL)
    await anyio.to_thread.run_sync(reap_orphans)


def _signal_tree(tree: ProcessTree, sig: signal.Signals) -> None:
    if tree.root is not None:
        _signal_group(tree.root, sig)
    for pid in tree.live():
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
        for pid, pgrp, state in ((r.pid, r.pgrp, r.state) for r in _proc_table())
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
    live = [row for row in _proc_table() if row.state not in (b"Z", b"X")]
    return _descendants_in(live, root_pid)


def _descendants_in(table: list[_Row], root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for row in table:
        children.setdefault(row.ppid, []).append(row.pid)
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
    for row in _proc_table():
        pid, ppid, state = row.pid, row.ppid, row.state
        if ppid == me and state == b"Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def stop_orphans(deadline: float = 5.0) -> int:
    """Kill whatever was orphaned onto ralph and is still running (outside ralph's own
    session): called when no agent or check runs any more, so anything left is a straggler
    from one (a process re-spawning faster than the stops sampled it). Returns how many."""
    own, me = os.getsid(0), os.getpid()
    killed: set[int] = set()
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        table = _proc_table()
        rows = {row.pid: row for row in table}
        left = [
            pid
            for pid in _descendants_in(table, me)
            if rows[pid].session != own and rows[pid].state != b"Z"
        ]
        if not left:
            break
        kill_now(left)
        killed.update(left)
        time.sleep(_POLL)
        reap_orphans()
    reap_orphans()
    return len(killed)


def processes_with_env(needle: bytes) -> list[int]:
    """Processes whose environment holds ``needle`` (``NAME=value``), other than ralph."""
    found = []
    for row in _proc_table():
        pid, state = row.pid, row.state
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


@dataclass(frozen=True)
class _Row:
    pid: int
    ppid: int
    pgrp: int
    state: bytes
    start: int
    session: int


def _proc_table() -> list[_Row]:
    """(pid, ppid, process group, state, start time, session) of every process, from
    /proc/<pid>/stat."""
    table = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        table.append(
            _Row(
                int(entry.name),
                int(fields[1]),
                int(fields[2]),
                fields[0],
                int(fields[19]),
                int(fields[3]),
            )
        )
    return table


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later one of that pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[19])
