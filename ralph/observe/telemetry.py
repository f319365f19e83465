"""Structured logs on stderr and the event log in ``.ralph/events.jsonl``.

Logging is configured once by the CLI (never at import). Each event line is written
with a single ``write`` on an ``O_APPEND`` descriptor, so a line is whole or absent.

``.ralph/`` is writable by the agent, so the log is opened as ralph's own file only: a
symlink, a hard link or anything but a plain file planted at its path is moved aside, never
written through. Text that came from bytes that aren't UTF-8 (a file name with ``\xe9``) is
written as ``\xe9``: every line stays valid UTF-8 JSON. Readers take the log as input, not
state: a line too long, not JSON or not an object is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import stat
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

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
        line = event_line(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_if_full()
        fd = open_own_file(self.path, os.O_RDWR | os.O_APPEND)
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
        lock = open_own_file(self.path.parent / f".{self.path.name}.lock", os.O_RDONLY)
        with contextlib.closing(os.fdopen(lock, "rb")):
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


def event_line(record: dict[str, Any]) -> bytes:
    """One event as a line of UTF-8 JSON, whatever text or numbers it holds."""
    try:
        text = json.dumps(record, default=str, ensure_ascii=False, allow_nan=False)
        return (text + "\n").encode("utf-8")
    except ValueError:  # a lone surrogate (bytes that aren't UTF-8), or NaN / infinity
        return (json.dumps(_printable(record), ensure_ascii=False) + "\n").encode("utf-8")


def _printable(value: object) -> object:
    """``value`` made of JSON types only, with text that encodes as UTF-8 and finite numbers."""
    if isinstance(value, str):
        return printable_text(value)
    if isinstance(value, dict):
        return {printable_text(str(key)): _printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_printable(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int):
        return value
    return printable_text(str(value))


def printable_text(text: str) -> str:
    """``text`` as valid UTF-8: a byte that wasn't UTF-8 (carried as a surrogate, as Python
    reads such file names) is shown as ``\\xe9``, any other lone surrogate as ``\\udXXX``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def open_own_file(path: Path, flags: int) -> int:
    """Open (or create) ``path`` as a plain file of ralph's: whatever an agent planted at the
    path (a symlink, a hard link to another file, a FIFO) is moved aside first, so ralph never
    writes through it. Returns the descriptor."""
    for _ in range(5):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if not (path.is_symlink() or path.exists()):
                raise
            _move_aside(path, f"not a plain file ({exc.strerror})")
            continue
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink <= 1:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        _move_aside(path, "not a plain file of its own")
    raise OSError(f"{path}: something keeps replacing this file")


def _move_aside(path: Path, what: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.planted-{stamp}")
    os.replace(path, aside)
    structlog.get_logger("ralph").warning(
        "ralph.path_set_aside", path=str(path), kept_at=str(aside), found=what
    )


MAX_EVENT_BYTES = 1024 * 1024
"""No event ralph writes comes near this; a longer line is someone else's and is skipped."""


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every whole event in the log (a torn last line from a crash is skipped, and so is
    a line that is too long, not JSON, or not an object)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return []
    events = []
    with handle:
        for raw in _lines(handle):
            record = _parse_line(raw.decode("utf-8", errors="replace"))
            if record is not None:
                events.append(record)
    return events


def _lines(handle: IO[bytes]) -> Iterator[bytes]:
    """The file's lines, split at newlines only (a JSON string may hold U+2028), each read
    with a bounded buffer: a line longer than MAX_EVENT_BYTES is skipped, never held."""
    while line := handle.readline(MAX_EVENT_BYTES + 1):
        if len(line) > MAX_EVENT_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = handle.readline(MAX_EVENT_BYTES)
            continue
        yield line


def _parse_line(line: str) -> dict[str, Any] | None:
    """The event on ``line``; for a torn line with an event appended onto it, that event.

    A crash tears one line and the next writer appends one event to it, so a few tries are
    enough; more would let a hostile line cost a parse per ``{"schema":`` it holds.
    """
    start = 0
    for _ in range(4):
        try:
            record = json.loads(line[start:])
        except (ValueError, RecursionError):
            start = line.find('{"schema":', start + 1)
            if start < 0:
                return None
            continue
        return record if isinstance(record, dict) else None
    return None
