"""What ralph remembers under ``.ralph/`` between runs: attempts and failures per task,
and the attempt in progress (so a restart after a crash can clean up after it).

Done-ness is not here: it lives in git history. Every write is atomic; read-modify-write
cycles hold ``state.lock`` so ``ralph retry`` and a running daemon don't lose updates.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ralph.backlog.tasks import TaskRecord
from ralph.outcome import Reason
from ralph.runtime.atomic import write_atomic

STATE_VERSION = 1


@dataclass(frozen=True)
class AttemptIntent:
    """Written before an agent starts; present on disk only while the attempt runs."""

    task_id: str
    attempt: int
    start_commit: str
    branch: str
    attempt_dir: str
    pgid: int | None = None
    phase: str = "agent"
    """``agent`` until the gate passes, then ``committing`` while ralph makes its commit."""


def _reason(value: object) -> Reason | None:
    try:
        return Reason(str(value)) if value else None
    except ValueError:  # written by a newer ralph, or by hand
        return None


class StateStore:
    """Task records in ``.ralph/state.json`` and the attempt in progress in ``current.json``."""

    def __init__(self, ralph_dir: Path) -> None:
        self.dir = ralph_dir
        self._state = ralph_dir / "state.json"
        self._current = ralph_dir / "current.json"
        self._lock = ralph_dir / "state.lock"

    def records(self, digests: dict[str, str]) -> dict[str, TaskRecord]:
        """Records of the tasks whose spec is unchanged since they were written."""
        tasks = self._read().get("tasks", {})
        records = {}
        for task_id, raw in tasks.items():
            if digests.get(task_id) == raw.get("digest"):
                records[task_id] = TaskRecord(
                    attempts=int(raw.get("attempts", 0)),
                    failed=bool(raw.get("failed", False)),
                    reason=str(raw.get("reason", "")),
                    last_reason=_reason(raw.get("failure_class")),
                )
        return records

    def last_failure(self, task_id: str, digest: str) -> str:
        """The summary of the task's last failed attempt, for the next prompt."""
        raw = self._read().get("tasks", {}).get(task_id, {})
        return str(raw.get("last_failure", "")) if raw.get("digest") == digest else ""

    def record_attempt(
        self, task_id: str, digest: str, attempt: int, failure: str, reason: Reason | None = None
    ) -> None:
        """Remember that ``attempt`` was used, how it ended and, for the next prompt, why it
        failed (``failure`` empty: it didn't)."""

        def change(raw: dict[str, Any]) -> None:
            failure_class = reason.value if reason is not None else ""
            raw.update(attempts=attempt, last_failure=failure, failure_class=failure_class)

        self._update(task_id, digest, change)

    def add_usage(self, task_id: str, digest: str, **usage: float | int | None) -> dict[str, Any]:
        """Add one agent run's figures (seconds, tokens, cost) to the task's totals.

        Figures the agent didn't report (None) leave their total unknown until one is
        reported. Returns the totals, which become the commit's receipt.
        """
        totals: dict[str, Any] = {}

        def change(raw: dict[str, Any]) -> None:
            current = raw.setdefault("usage", {})
            for key, value in usage.items():
                if value is not None:
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
            found = state.get("tasks", {}).pop(task_id, None) is not None
            if found:
                self._write(state)
            return found

    def begin_attempt(self, intent: AttemptIntent) -> None:
        """Durably record the attempt about to start."""
        write_atomic(self._current, json.dumps(asdict(intent), indent=2) + "\n")

    def end_attempt(self) -> None:
        """The attempt is fully resolved (committed or rolled back)."""
        self._current.unlink(missing_ok=True)

    def interrupted_attempt(self) -> AttemptIntent | None:
        """The attempt a killed ralph left behind, if any."""
        try:
            raw = json.loads(self._current.read_text(encoding="utf-8"))
            return AttemptIntent(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # Written atomically, so unreadable means hand-edited: nothing to recover from it.
            self._current.unlink(missing_ok=True)
            return None

    def _update(self, task_id: str, digest: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked():
            state = self._read()
            tasks = state.setdefault("tasks", {})
            raw = tasks.get(task_id)
            if raw is None or raw.get("digest") != digest:
                raw = {"digest": digest, "attempts": 0, "failed": False, "reason": ""}
            change(raw)
            tasks[task_id] = raw
            self._write(state)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": STATE_VERSION, "tasks": {}}
        except ValueError:
            return {"version": STATE_VERSION, "tasks": {}}
        return data if isinstance(data, dict) else {"version": STATE_VERSION, "tasks": {}}

    def _write(self, state: dict[str, Any]) -> None:
        state["version"] = STATE_VERSION
        write_atomic(self._state, json.dumps(state, indent=2, sort_keys=True) + "\n")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
