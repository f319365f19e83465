"""Service managers: the systemd notify protocol, and a heartbeat for container checks.

Under systemd (``Type=notify``) ralph sends ``READY=1`` once it holds the lock and has
recovered, ``STATUS=`` lines saying what it does, ``WATCHDOG=1`` every half
``WATCHDOG_USEC`` while its event loop runs, and ``STOPPING=1`` on the way out. The
same beat rewrites ``.ralph/heartbeat``, which ``python -m ralph.runtime.service health``
reads for a container's HEALTHCHECK. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import anyio

from ralph.runtime.atomic import write_atomic

HEARTBEAT_EVERY = 15.0
HEARTBEAT_STALE = 120.0


class Notifier:
    """Speaks the notify protocol when ``NOTIFY_SOCKET`` is set; otherwise does nothing."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.status_text = "starting"
        self.is_ready = False
        self.is_stopping = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Notifier:
        """Read NOTIFY_SOCKET and WATCHDOG_USEC (honouring WATCHDOG_PID) as systemd sets them."""
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        return cls(
            environ.get("NOTIFY_SOCKET") or None,
            int(usec) if usec.isdigit() and for_us else None,
        )

    def send(self, *lines: str) -> None:
        """Send one datagram; a manager that went away is not ralph's failure."""
        if not self._address:
            return
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
        ):
            sock.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str = "ready") -> None:
        """Startup is over (lock held, recovery done): the first message the manager gets
        from the watchdog's point of view, and said once."""
        if self.is_ready:
            return
        self.status_text = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self.is_ready = True

    def status(self, text: str) -> None:
        """What ralph is doing now, for ``systemctl status`` and the heartbeat (sent once
        ready: before that, READY carries the first status)."""
        self.status_text = text
        if self.is_ready and not self.is_stopping:
            self.send(f"STATUS={text}")

    def stopping(self) -> None:
        """Said once, however many signals arrive."""
        if self.is_stopping:
            return
        self.is_stopping = True
        self.status_text = "stopping"
        self.send("STOPPING=1", "STATUS=stopping")


async def beat(notifier: Notifier, ralph_dir: Path) -> None:
    """Until cancelled: the watchdog ping and the heartbeat file, while the loop is alive."""
    interval = min(notifier.watchdog_interval or HEARTBEAT_EVERY, HEARTBEAT_EVERY)
    while True:
        if notifier.watchdog_interval and notifier.is_ready:  # never a ping before READY
            notifier.send("WATCHDOG=1")
        await anyio.to_thread.run_sync(write_heartbeat, ralph_dir, notifier.status_text)
        await anyio.sleep(interval)


def write_heartbeat(ralph_dir: Path, status: str) -> None:
    record = {"pid": os.getpid(), "at": datetime.now(UTC).isoformat(), "status": status}
    write_atomic(ralph_dir / "heartbeat", json.dumps(record) + "\n")


def healthy(ralph_dir: Path, now: float | None = None) -> tuple[bool, str]:
    """Whether a ralph is alive here: a fresh heartbeat from a process that still runs."""
    try:
        record = json.loads((ralph_dir / "heartbeat").read_text())
        age = (now or time.time()) - datetime.fromisoformat(record["at"]).timestamp()
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, "no heartbeat yet"
    if age > HEARTBEAT_STALE:
        return False, f"heartbeat is {age:.0f}s old"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"ralph (pid {pid}) is gone"
    except PermissionError:
        pass  # alive, owned by someone else
    return True, f"{record.get('status', '')} (heartbeat {age:.0f}s ago)"


def main(argv: list[str]) -> int:
    """``python -m ralph.runtime.service health REPO``: exit 0 when ralph in REPO is alive."""
    if len(argv) != 2 or argv[0] != "health":
        print("usage: python -m ralph.runtime.service health REPOSITORY", file=sys.stderr)
        return 2
    ok, detail = healthy(Path(argv[1]) / ".ralph")
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
