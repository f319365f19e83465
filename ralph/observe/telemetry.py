"""Structured logs on stderr and the event log in ``.ralph/events.jsonl``.

Logging is configured once by the CLI (never at import). Each event line is written
with a single ``write`` on an ``O_APPEND`` descriptor, so a line is whole or absent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

EVENTS_SCHEMA = 1
LogFormat = Literal["auto", "console", "json"]


def configure_logging(log_format: LogFormat = "auto", verbose: bool = False) -> None:
    """Console rendering on a terminal, one JSON object per line otherwise."""
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def new_run_id() -> str:
    """A short id that ties together every event of one ``ralph run``."""
    return uuid.uuid4().hex[:12]


EVENTS_MAX_BYTES = 64 * 1024 * 1024


class EventLog:
    """Appends timestamped events, one JSON object per line, rotated by size.

    A full ``events.jsonl`` is renamed to ``events-<UTC time>.jsonl`` before the next
    line; renaming loses nothing, and every rotated file is kept (readers go through
    them in name order, then ``events.jsonl``).
    """

    def __init__(self, path: Path, run_id: str, max_bytes: int = EVENTS_MAX_BYTES) -> None:
        self.path = path
        self.run_id = run_id
        self.max_bytes = max_bytes
        self._checked_end = False

    def emit(self, event: str, **fields: Any) -> None:
        """Append one event; ``fields`` must be JSON-serialisable."""
        record = {
            "schema": EVENTS_SCHEMA,
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "mono": round(time.monotonic(), 3),
            "run_id": self.run_id,
            "event": event,
            **fields,
        }
        line = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_if_full()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if not self._checked_end:
                line = _after_torn_line(fd) + line
                self._checked_end = True
            os.write(fd, line)
        finally:
            os.close(fd)

    def _rotate_if_full(self) -> None:
        if not self._full():
            return
        # Rotations are serialised so that file names sort in the order of their lines.
        with (self.path.parent / f".{self.path.name}.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._full():
                return  # another writer rotated it a moment ago
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            target = self.path.with_name(f"{self.path.stem}-{stamp}.jsonl")
            while target.exists():
                target = target.with_name(target.stem + "0.jsonl")
            os.rename(self.path, target)

    def _full(self) -> bool:
        try:
            return self.path.stat().st_size >= self.max_bytes
        except FileNotFoundError:
            return False


def _after_torn_line(fd: int) -> bytes:
    """A newline when the log ends in a torn line (a crash mid-write), so only it is lost.

    Checked once per process, at its first event. A line another process is writing at
    that moment can look torn, but its size still grows; a crash's torn line stays put.
    """
    for _ in range(3):
        size = os.fstat(fd).st_size
        if not size or os.pread(fd, 1, size - 1) == b"\n":
            return b""
        time.sleep(0.01)
        if os.fstat(fd).st_size != size:
            continue  # someone is appending right now
    return b"\n"


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every whole event in the log (a torn last line from a crash is skipped)."""
    events = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        record = _parse_line(line)
        if record is not None:
            events.append(record)
    return events


def _parse_line(line: str) -> dict[str, Any] | None:
    """The event on ``line``; for a torn line with an event appended onto it, that event."""
    try:
        record = json.loads(line)
    except ValueError:
        start = line.find('{"schema":', 1)
        return _parse_line(line[start:]) if start > 0 else None
    return record if isinstance(record, dict) else None
