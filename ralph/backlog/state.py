"""What ralph remembers between runs, kept where an agent in its worktree doesn't write:
``<git dir>/ralph/``, outside the work tree.

- ``state.json``: attempts, failures and usage per task (done-ness is not here: it lives in
  git history);
- ``workers/<n>.json``: the attempt each worker is in, written before its agent starts and
  removed once the attempt is resolved, so a restart after a kill can clean up after it.

Every file carries a checksum of its content and is parsed defensively: a file that is
corrupt, foreign or forged in an obvious way is set aside (renamed, never deleted) with a
warning, and ralph goes on as if it were absent. Writes are atomic; read-modify-write cycles
hold ``state.lock`` so ``ralph retry`` and a running daemon don't lose updates.

The state an older ralph kept in ``.ralph/state.json`` is imported once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from ralph.backlog.tasks import TaskRecord
from ralph.outcome import Reason
from ralph.runtime.atomic import write_atomic

log = structlog.get_logger("ralph")

STATE_VERSION = 2
MAX_RECORD_BYTES = 16 * 1024 * 1024
_USAGE_KEYS = ("agent_seconds", "check_seconds", "input_tokens", "output_tokens", "cost_usd")


@dataclass(frozen=True)
class AttemptIntent:
    """Written before an agent starts; on disk only while the attempt runs."""

    task_id: str
    attempt: int
    start_commit: str
    branch: str
    attempt_dir: str
    worker: int = 0
    worktree: str = ""
    phase: str = "agent"
    """``agent`` while the agent and checks run, ``landing`` while the branch moves."""
    pgid: int | None = None
    cgroup: str | None = None
    processes: tuple[tuple[int, int], ...] = ()
    """(pid, start time) of every process seen in the attempt's tree, for recovery."""
    branch_tip: str = ""
    """The branch's tip when the agent started: an agent that moves it is undone."""
    landing: Mapping[str, Any] = field(default_factory=dict)
    """While landing: old and new tip, and where the work tree's index is being written."""
    since: str = ""
    """When the attempt started (ISO 8601, UTC)."""
    agent_event: Mapping[str, Any] = field(default_factory=dict)
    """The agent's last event read live: ``signal``, ``detail``, ``at``; {} before any."""

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["processes"] = [list(pair) for pair in self.processes]
        raw["landing"] = dict(self.landing)
        raw["agent_event"] = dict(self.agent_event)
        return raw

    @classmethod
    def from_json(cls, raw: object) -> AttemptIntent:
        """Parse a record; ValueError when it isn't one ralph wrote."""
        if not isinstance(raw, dict):
            raise ValueError("not an object")
        try:
            intent = cls(
                task_id=_text(raw["task_id"]),
                attempt=_count(raw["attempt"]),
                start_commit=_sha(raw["start_commit"]),
                branch=_text(raw["branch"]),
                attempt_dir=_text(raw["attempt_dir"]),
                worker=_count(raw.get("worker", 0)),
                worktree=_text(raw.get("worktree", "")),
                phase=_text(raw.get("phase", "agent")),
                pgid=_optional_count(raw.get("pgid")),
                cgroup=_optional_text(raw.get("cgroup")),
                processes=tuple(
                    (_count(pid), _count(start)) for pid, start in raw.get("processes", [])
                ),
                branch_tip=_text(raw.get("branch_tip", "")),
                landing=_mapping(raw.get("landing", {})),
                since=_text(raw.get("since", "")),
                agent_event=_mapping(raw.get("agent_event", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or wrong field: {exc}") from None
        return intent


class StateStore:
    """Task records and attempts in progress, in ralph's records folder."""

    def __init__(self, records: Path, legacy: Path | None = None) -> None:
        """``records``: ``<git dir>/ralph``; ``legacy``: an older ralph's ``.ralph`` folder,
        whose state is imported once."""
        self.dir = records
        self._state = records / "state.json"
        self._workers = records / "workers"
        self._lock = records / "state.lock"
        self._legacy = legacy
        self._thread_lock = threading.RLock()
        self._depth = threading.local()

    # --- task records ----------------------------------------------------------------------

    def records(self, digests: Mapping[str, str]) -> dict[str, TaskRecord]:
        """Records of the tasks whose spec is unchanged since they were written."""
        records = {}
        for task_id, raw in self._read()["tasks"].items():
            if digests.get(task_id) == raw.get("digest"):
                records[task_id] = TaskRecord(
                    attempts=raw["attempts"],
                    failed=raw["failed"],
                    reason=raw["reason"],
                    last_reason=_reason(raw["failure_class"]),
                    done_commit=raw["done_commit"],
                )
        return records

    def last_failure(self, task_id: str, digest: str) -> str:
        """The summary of the task's last failed attempt, for the next prompt."""
        raw = self._read()["tasks"].get(task_id)
        return str(raw["last_failure"]) if raw and raw.get("digest") == digest else ""

    def record_attempt(
        self, task_id: str, digest: str, attempt: int, failure: str, reason: Reason | None = None
    ) -> None:
        """Remember that ``attempt`` was used, how it ended and, for the next prompt, why it
        failed (``failure`` empty: it didn't)."""

        def change(raw: dict[str, Any]) -> None:
            if raw["done_commit"]:  # done once, undone since (a reset): it starts over
                raw.update(_new_record(digest))
            failure_class = reason.value if reason is not None else ""
            raw.update(attempts=attempt, last_failure=failure, failure_class=failure_class)

        self._update(task_id, digest, change)

    def record_done(self, task_id: str, digest: str, commit: str) -> None:
        """The task's commit landed: if history loses it, the task starts over."""

        def change(raw: dict[str, Any]) -> None:
            raw.update(done_commit=commit)

        self._update(task_id, digest, change)

    def add_usage(self, task_id: str, digest: str, **usage: float | int | None) -> dict[str, Any]:
        """Add one agent run's figures (seconds, tokens, cost) to the task's totals.

        Figures the agent didn't report (None) leave their total unknown until one is
        reported. Returns the totals, which become the commit's receipt.
        """
        totals: dict[str, Any] = {}

        def change(raw: dict[str, Any]) -> None:
            current = raw["usage"]
            for key, value in usage.items():
                if value is not None and math.isfinite(value):
                    current[key] = round((current.get(key) or 0) + value, 6)
            totals.update(current)

        self._update(task_id, digest, change)
        return totals

    def mark_failed(self, task_id: str, digest: str, reason: str) -> None:
        """The task used up its attempts; it stays failed until retry or a spec change."""

        def change(raw: dict[str, Any]) -> None:
            raw.update(failed=True, reason=reason)

        self._update(task_id, digest, change)

    def forget(self, task_id: str) -> bool:
        """Drop everything known about a task (``ralph retry``); False if nothing was known."""
        with self._locked():
            state = self._read()
            found = state["tasks"].pop(task_id, None) is not None
            if found:
                self._write(state)
            return found

    def wake(self) -> None:
        """Tell a running daemon to look at the backlog now (``ralph retry``)."""
        folder = self.wake_dir
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "wake").write_text(datetime.now(UTC).isoformat() + "\n")

    @property
    def wake_dir(self) -> Path:
        """A folder only wake() writes in: the daemon watches it."""
        return self.dir / "wake"

    # --- attempts in progress --------------------------------------------------------------

    def begin_attempt(self, intent: AttemptIntent) -> None:
        """Durably record the attempt a worker is about to start (or its new phase)."""
        _write_checked(self._workers / f"{intent.worker}.json", intent.to_json())

    def end_attempt(self, worker: int = 0) -> None:
        """The worker's attempt is fully resolved (committed or rolled back)."""
        (self._workers / f"{worker}.json").unlink(missing_ok=True)

    def interrupted_attempts(self) -> list[AttemptIntent]:
        """The attempts a killed ralph left behind, one per worker that was in one."""
        found = []
        for path in sorted(self._workers.glob("*.json")) if self._workers.is_dir() else []:
            raw = _read_checked(path)
            if raw is None:
                continue
            try:
                found.append(AttemptIntent.from_json(raw))
            except ValueError as exc:
                _set_aside(path, f"not an attempt record ralph wrote ({exc})")
        return found

    def begin_landing(self, landing: Mapping[str, Any]) -> None:
        """Durably record a landing about to move the branch (engine.landing)."""
        _write_checked(self.dir / "landing.json", dict(landing))

    def end_landing(self) -> None:
        (self.dir / "landing.json").unlink(missing_ok=True)

    def interrupted_landing(self) -> dict[str, Any] | None:
        """The landing a killed ralph was in the middle of, if any."""
        return _read_checked(self.dir / "landing.json")

    def attempt_in_progress(self) -> list[str]:
        """The tasks of the attempts on record (for ``ralph status`` while a run holds the lock)."""
        return [intent.task_id for intent in self.interrupted_attempts()]

    # --- the file ----------------------------------------------------------------------------

    def _update(self, task_id: str, digest: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked():
            state = self._read()
            tasks = state["tasks"]
            raw = tasks.get(task_id)
            if raw is None or raw.get("digest") != digest:
                raw = _new_record(digest)
            change(raw)
            tasks[task_id] = raw
            self._write(state)

    def _read(self) -> dict[str, Any]:
        raw = _read_checked(self._state)
        if raw is None and self._legacy is not None:
            raw = self._import_legacy()
        tasks = _valid_tasks(raw, self._state)
        return {"version": STATE_VERSION, "tasks": tasks}

    def _import_legacy(self) -> dict[str, Any] | None:
        """An older ralph's ``.ralph/state.json`` (no checksum), read once and kept as is."""
        assert self._legacy is not None
        old = self._legacy / "state.json"
        try:
            if old.is_symlink() or old.stat().st_size > MAX_RECORD_BYTES:
                return None
            raw = json.loads(old.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict):
            return None
        tasks = _valid_tasks(raw, old)
        state = {"version": STATE_VERSION, "tasks": tasks}
        with self._locked():
            if not self._state.exists():
                self._write(state)
        return state

    def _write(self, state: dict[str, Any]) -> None:
        _write_checked(self._state, {"version": STATE_VERSION, "tasks": state["tasks"]})

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """``state.lock`` across processes; re-entrant within one thread (an update that reads
        an older ralph's state while it holds the lock must not wait for itself)."""
        with self._thread_lock:
            if getattr(self._depth, "value", 0):
                self._depth.value += 1
                try:
                    yield
                finally:
                    self._depth.value -= 1
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._lock.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._depth.value = 1
                try:
                    yield
                finally:
                    self._depth.value = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)


def legacy_intent(ralph_dir: Path) -> dict[str, Any] | None:
    """The attempt an older ralph (one tree, no worktrees) was killed in, as it recorded it
    in ``.ralph/current.json``; None when there is none. Agent-writable: only a hint."""
    path = ralph_dir / "current.json"
    try:
        if path.is_symlink() or path.stat().st_size > 65536:
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _new_record(digest: str) -> dict[str, Any]:
    return {
        "digest": digest,
        "attempts": 0,
        "failed": False,
        "reason": "",
        "last_failure": "",
        "failure_class": "",
        "done_commit": "",
        "usage": {},
    }


def _valid_tasks(raw: object, path: Path) -> dict[str, dict[str, Any]]:
    """The task records of a parsed state file; a record with a wrong shape is dropped, a
    file with a wrong shape is set aside."""
    if raw is None:
        return {}
    tasks = raw.get("tasks") if isinstance(raw, dict) else None
    if not isinstance(tasks, dict):
        _set_aside(path, "its tasks are not a table")
        return {}
    valid: dict[str, dict[str, Any]] = {}
    for task_id, record in tasks.items():
        cleaned = _valid_record(record)
        if isinstance(task_id, str) and cleaned is not None:
            valid[task_id] = cleaned
        else:
            log.warning("ralph.state_record_dropped", path=str(path), task=str(task_id)[:100])
    return valid


def _valid_record(record: object) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return None
    try:
        cleaned = _new_record(_text(record["digest"]))
        cleaned["attempts"] = min(_count(record.get("attempts", 0)), 10_000)
        cleaned["failed"] = record.get("failed", False) is True
        for key in ("reason", "last_failure", "failure_class", "done_commit"):
            cleaned[key] = _text(record.get(key, ""))[:20_000]
        usage = record.get("usage", {})
        if isinstance(usage, dict):
            cleaned["usage"] = {
                key: value
                for key, value in usage.items()
                if key in _USAGE_KEYS
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and 0 <= value < 1e12
            }
    except (KeyError, TypeError, ValueError):
        return None
    return cleaned


def _reason(value: object) -> Reason | None:
    try:
        return Reason(str(value)) if value else None
    except ValueError:  # written by a newer ralph, or by hand
        return None


def _checksum(payload: object) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _write_checked(path: Path, payload: dict[str, Any]) -> None:
    document = {"checksum": _checksum(payload), "record": payload}
    write_atomic(path, json.dumps(document, indent=1, sort_keys=True, ensure_ascii=True) + "\n")


def _read_checked(path: Path) -> dict[str, Any] | None:
    """A record written by _write_checked, or None (missing; or set aside when bad)."""
    try:
        if path.is_symlink():
            _set_aside(path, "a symlink where ralph keeps a record")
            return None
        if path.stat().st_size > MAX_RECORD_BYTES:
            _set_aside(path, "larger than any record ralph writes")
            return None
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _set_aside(path, f"unreadable ({exc.__class__.__name__})")
        return None
    if not isinstance(document, dict) or not isinstance(document.get("record"), dict):
        _set_aside(path, "not a record ralph wrote")
        return None
    record: dict[str, Any] = document["record"]
    if document.get("checksum") != _checksum(record):
        _set_aside(path, "its checksum doesn't match its content")
        return None
    return record


def _set_aside(path: Path, why: str) -> None:
    """Rename a bad record out of the way, never delete it, and say so."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.bad-{stamp}")
    try:
        path.replace(aside)
    except OSError:
        return
    log.warning("ralph.record_set_aside", path=str(path), kept_at=str(aside), reason=why)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError("expected a whole number >= 0")
    return value


def _optional_count(value: object) -> int | None:
    return None if value is None else _count(value)


def _sha(value: object) -> str:
    text = _text(value)
    if len(text) not in (40, 64) or any(c not in "0123456789abcdef" for c in text):
        raise TypeError("expected a commit id")
    return text


def _mapping(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected a table")
    return value
