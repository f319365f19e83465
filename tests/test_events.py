"""The event log: whole lines, rotation by size that loses nothing."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from ralph.observe.telemetry import EventLog, read_events


def all_lines(ralph_dir: Path) -> list[dict[str, object]]:
    rotated = sorted(ralph_dir.glob("events-*.jsonl"))
    events: list[dict[str, object]] = []
    for path in [*rotated, ralph_dir / "events.jsonl"]:
        events += read_events(path)
    return events


def test_rotation_keeps_every_line_in_order(tmp_path: Path) -> None:
    """A log rotated many times still holds every event once, in order, over its files."""
    log = EventLog(tmp_path / "events.jsonl", "run-1", max_bytes=2000)
    for number in range(500):
        log.emit("tick", number=number)
    assert len(list(tmp_path.glob("events-*.jsonl"))) > 10
    assert [event["number"] for event in all_lines(tmp_path)] == list(range(500))
    assert all(path.stat().st_size < 2000 + 300 for path in tmp_path.glob("events-*.jsonl"))


def _writer(path: str, writer: int) -> None:
    log = EventLog(Path(path), f"run-{writer}", max_bytes=5000)
    for number in range(300):
        log.emit("tick", writer=writer, number=number, padding="x" * 50)


def test_concurrent_writers_lose_no_line(tmp_path: Path) -> None:
    """Two processes appending and rotating at once leave every line whole and present."""
    path = str(tmp_path / "events.jsonl")
    workers = [multiprocessing.Process(target=_writer, args=(path, n)) for n in (1, 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    events = all_lines(tmp_path)
    for writer in (1, 2):
        numbers = [e["number"] for e in events if e["writer"] == writer]
        assert numbers == list(range(300))
    for file in tmp_path.glob("events*.jsonl"):
        for line in file.read_text().splitlines():
            json.loads(line)  # every line is whole


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """A line cut short by a crash is skipped by readers; the lines before it are kept."""
    log = EventLog(tmp_path / "events.jsonl", "run-1")
    log.emit("a")
    log.emit("b")
    with (tmp_path / "events.jsonl").open("ab") as handle:
        handle.write(b'{"event": "c", "ts": ')
    assert [event["event"] for event in read_events(tmp_path / "events.jsonl")] == ["a", "b"]


def test_event_after_a_torn_line_starts_on_a_fresh_line(tmp_path: Path) -> None:
    """After a torn last line, the next run's first event is on a line of its own and kept."""
    path = tmp_path / "events.jsonl"
    EventLog(path, "run-1").emit("a")
    with path.open("ab") as handle:
        handle.write(b'{"event": "c", "ts": ')
    EventLog(path, "run-2").emit("d")
    assert [event["event"] for event in read_events(path)] == ["a", "d"]
    assert path.read_bytes().splitlines()[-1].startswith(b'{"schema"')


def test_event_appended_onto_a_torn_line_is_read(tmp_path: Path) -> None:
    """An event an older ralph appended onto a torn line is still read."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event": "c", "ts": {"schema": 1, "event": "d"}\n')
    assert [event["event"] for event in read_events(path)] == ["d"]
