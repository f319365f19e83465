"""cgroup v2: a folder of the kernel's per attempt, so every process an agent starts is found
and killed, whatever it does to its session, group, parent or environment.

ralph makes ``ralph-<pid>/`` below its own cgroup where the kernel lets it (root, or a
systemd unit with ``Delegate=yes``), and an attempt's cgroup inside that. Where it can't,
the caller falls back to process groups and watching the process tree.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

_POLL = 0.02


def own_cgroup_root(pid: int | None = None) -> Path | None:
    """The cgroup v2 folder ralph runs in, if there is a cgroup v2 hierarchy here."""
    mount = _cgroup2_mount()
    if mount is None:
        return None
    try:
        lines = Path(f"/proc/{pid or os.getpid()}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, path = line.partition("::")
        if hierarchy == "0":
            folder = mount / path.lstrip("/")
            return folder if folder.is_dir() else None
    return None


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def make_parent(name: str) -> Path | None:
    """``<own cgroup>/<name>``, made now; None when this ralph may not make cgroups."""
    root = own_cgroup_root()
    if root is None:
        return None
    folder = root / name
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    if not os.access(folder / "cgroup.procs", os.W_OK):
        with contextlib.suppress(OSError):
            folder.rmdir()
        return None
    return folder


def make(parent: Path, name: str) -> Path | None:
    """An empty cgroup for one attempt (an old one of that name is emptied first)."""
    folder = parent / name
    if folder.is_dir():
        kill(folder)
        with contextlib.suppress(OSError):
            folder.rmdir()
    try:
        folder.mkdir()
    except OSError:
        return None
    return folder


def enter_argv(cgroup: Path, argv: list[str]) -> list[str]:
    """``argv`` started inside ``cgroup``: the shell moves itself in, then becomes argv, so
    nothing argv starts can begin outside."""
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    return ["/bin/sh", "-c", script, str(cgroup), *argv]


def members(cgroup: Path) -> list[int]:
    """The processes in ``cgroup`` and below it."""
    found: list[int] = []
    for dirpath, _dirs, _files in os.walk(cgroup):
        with contextlib.suppress(OSError):
            text = Path(dirpath, "cgroup.procs").read_text()
            found.extend(int(pid) for pid in text.split())
    return found


def signal_all(cgroup: Path, sig: int) -> None:
    for pid in members(cgroup):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill(cgroup: Path, wait: float = 5.0) -> None:
    """SIGKILL everything in ``cgroup`` at once (``cgroup.kill``), and wait until it is empty."""
    try:
        (cgroup / "cgroup.kill").write_text("1")
    except OSError:
        signal_all(cgroup, 9)
    deadline = time.monotonic() + wait
    while members(cgroup) and time.monotonic() < deadline:
        time.sleep(_POLL)


def remove(cgroup: Path) -> None:
    """Kill what is left and remove the folder (and any the agent made inside it)."""
    if not cgroup.is_dir():
        return
    kill(cgroup)
    for dirpath, _dirs, _files in sorted(os.walk(cgroup), key=lambda item: -len(item[0])):
        with contextlib.suppress(OSError):
            Path(dirpath).rmdir()


def stale_parents(prefix: str, alive: Callable[[int], bool]) -> list[Path]:
    """Folders ``<own cgroup>/<prefix><pid>`` of ralphs that are no longer alive."""
    root = own_cgroup_root()
    if root is None:
        return []
    stale = []
    for folder in root.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix)
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            stale.append(folder)
    return stale
