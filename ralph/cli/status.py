"""``ralph status``: every task's state, who works on what and since when, what is waiting."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import click

from ralph.backlog.snapshot import Backlog, read_backlog
from ralph.backlog.state import AttemptIntent, StateStore
from ralph.backlog.tasks import State, Task
from ralph.memory.learnings import pending_count
from ralph.runtime.atomic import bytes_under
from ralph.runtime.lock import lock_holder
from ralph.settings import Settings
from ralph.vcs import repo
from ralph.vcs.gitenv import Git, GitEnv, records_dir
from ralph.vcs.history import DoneTasks


@dataclass(frozen=True)
class Status:
    """What ``ralph status`` shows: the backlog, and the attempts on record."""

    backlog: Backlog
    attempts: dict[str, AttemptIntent]
    """Task id → the attempt a worker is in (or was in, when ralph was killed)."""
    live: bool
    """A ralph holds the lock: the attempts on record are running now."""
    ralph_dir_bytes: int
    holders: dict[str, dict[str, Any]] = field(default_factory=dict)
    """With a queue: task id → who holds it (host, pid, since), any machine."""
    pending_learnings: int = 0
    """Learnings waiting for a person (``ralph learnings pending``)."""

    def task_rows(self) -> list[dict[str, Any]]:
        return [self._row(task) for task in self.backlog]

    def _row(self, task: Task) -> dict[str, Any]:
        row = task.as_dict()
        intent = self.attempts.get(task.id)
        row["worker"] = intent.worker if intent and self.live else None
        row["since"] = intent.since or None if intent and self.live else None
        row["interrupted_attempt"] = intent.attempt if intent and not self.live else None
        row["held_by"] = self.holders.get(task.id)
        row["agent_event"] = _agent_event(intent) if intent and self.live else None
        if intent is not None and not self.live and task.state is State.PENDING:
            row["reason"] = (
                f"attempt {intent.attempt} was interrupted (ralph was killed); the next "
                "start cleans it up and counts it"
            )
        return row


def _agent_event(intent: AttemptIntent) -> dict[str, Any] | None:
    """The running agent's last event read live, with its age in seconds; None before any
    (or for an agent ralph doesn't read live)."""
    event = intent.agent_event
    if not isinstance(event.get("at"), str):
        return None
    try:
        at = datetime.fromisoformat(event["at"])
    except ValueError:
        return None
    age = max(0, int((datetime.now(UTC) - at).total_seconds()))
    return {
        "signal": str(event.get("signal", "")),
        "detail": str(event.get("detail", "")),
        "at": event["at"],
        "age_s": age,
    }


def read_status(root: Path, settings: Settings) -> Status:
    """The status now: a running ralph's attempts show as running, a killed one's as
    interrupted."""
    records = records_dir(root, os.environ)
    state = StateStore(records, legacy=root / repo.STATE_DIR)
    live = lock_holder(root / repo.STATE_DIR / "lock", records.parent) is not None
    intents = {intent.task_id: intent for intent in state.interrupted_attempts()}
    git_env = GitEnv.for_process(root, os.environ)
    try:
        branch = repo.branch_name(root) or "HEAD"
        running = list(intents) if live else []
        done = DoneTasks().read(Git(root, git_env), branch)
        backlog = read_backlog(root, settings, state, done, running=running)
    finally:
        git_env.discard()
    holders = _fleet_holders(settings) if settings.queue else {}
    waiting = pending_count(root)
    return Status(backlog, intents, live, bytes_under(root / repo.STATE_DIR), holders, waiting)


def _fleet_holders(settings: Settings) -> dict[str, dict[str, Any]]:
    """Who holds which task in the shared queue; {} (with a warning) when it can't be read."""
    from ralph.fleet import FleetError, FleetQueue

    assert settings.queue is not None

    async def read() -> dict[str, dict[str, Any]]:
        async with FleetQueue(settings.queue or "", stall_timeout=settings.stall_timeout) as queue:
            return {
                holder.task_id: {
                    "host": holder.host,
                    "pid": holder.pid,
                    "since": holder.since.isoformat(timespec="seconds") if holder.since else None,
                    "stalled": holder.stalled,
                }
                for holder in await queue.holders()
            }

    try:
        return anyio.run(read)
    except FleetError as exc:
        click.echo(f"ralph: the queue can't be read ({exc}); holders not shown", err=True)
        return {}


def queue_view(settings: Settings) -> dict[str, Any] | None:
    """The shared queue's jobs by status, requeues, stalls and live processes, for ``ralph
    stats``; None without a queue, or (with a warning) when it can't be read."""
    if not settings.queue:
        return None
    from ralph.fleet import FleetError, FleetQueue

    async def read() -> dict[str, Any]:
        async with FleetQueue(settings.queue or "", stall_timeout=settings.stall_timeout) as queue:
            numbers = await queue.stats()
        return {
            "jobs": dict(numbers.jobs),
            "requeued": numbers.retries,
            "stalls": numbers.stalls,
            "processes": numbers.peers,
        }

    try:
        return anyio.run(read)
    except FleetError as exc:
        click.echo(f"ralph: the queue can't be read ({exc}); its figures are not shown", err=True)
        return None


def print_status(status: Status, as_json: bool) -> None:
    rows = status.task_rows()
    if as_json:
        document = {
            "tasks": rows,
            "running": status.live,
            "ralph_dir_bytes": status.ralph_dir_bytes,
        }
        click.echo(json.dumps(document, indent=2))
        return
    table = [
        [
            row["id"],
            row["state"],
            str(row["attempts"]),
            "-" if row["priority"] is None else str(row["priority"]),
            _held(row),
            row["title"],
            _reason(row),
        ]
        for row in rows
    ]
    print_table(["ID", "STATE", "ATTEMPTS", "PRIORITY", "WORKER", "TITLE", "REASON"], table)
    if status.pending_learnings:
        noun = "learning waits" if status.pending_learnings == 1 else "learnings wait"
        click.echo(f"\n{status.pending_learnings} {noun} for review: `ralph learnings pending`")


def _reason(row: dict[str, Any]) -> str:
    event = row.get("agent_event")
    if not event:
        return str(row["reason"])
    detail = f" ({event['detail']})" if event["detail"] else ""
    return f"agent: {event['signal']}{detail}, {event['age_s']}s ago"


def _held(row: dict[str, Any]) -> str:
    if row.get("held_by"):
        held = row["held_by"]
        return f"{held['host']}:{held['pid']}" if held["host"] else "stalled"
    if row["worker"] is None:
        return "-"
    return f"w{row['worker']} since {row['since']}" if row["since"] else f"w{row['worker']}"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
