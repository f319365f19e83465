"""Task states: what each spec is now (pending, running, done, failed, blocked, invalid).

Pure functions over the specs, the set of task ids committed on the branch, and the
recorded failures; nothing here touches the disk.
"""

from __future__ import annotations

import graphlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from ralph.backlog.specs import Spec, SpecSet
from ralph.outcome import Reason


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    INVALID = "invalid"


class BlockKind(StrEnum):
    """Why a task can never run as things stand (its dependency ``on`` can't become done)."""

    CYCLE = "cycle"
    UNKNOWN = "unknown"
    INVALID = "invalid"
    FAILED = "failed"
    BLOCKED = "blocked"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Blocker:
    """A blocked task's reason as data: what kind, and which task (or cycle) it is about."""

    kind: BlockKind
    on: str

    @property
    def by_failure(self) -> bool:
        """Blocked only because a dependency failed (or is blocked itself): no spec is wrong."""
        return self.kind in (BlockKind.FAILED, BlockKind.BLOCKED)

    def describe(self) -> str:
        if self.kind is BlockKind.CYCLE:
            return f"dependency cycle: {self.on}"
        if self.kind is BlockKind.UNKNOWN:
            return f"depends on unknown task {self.on}"
        if self.kind is BlockKind.INVALID:
            return f"depends on {self.on}, whose spec is invalid"
        return f"depends on {self.on}, which is {self.kind.value}"


@dataclass(frozen=True)
class TaskRecord:
    """What ralph remembers of a task between runs (see ralph.backlog.state)."""

    attempts: int = 0
    failed: bool = False
    reason: str = ""
    last_reason: Reason | None = None
    done_commit: str = ""
    """The commit that made the task done, when ralph made it."""


@dataclass(frozen=True)
class Task:
    """One line of ``ralph status``."""

    id: str
    state: State
    path: str
    title: str = ""
    priority: int | None = None
    """None for an invalid spec, whose priority can't be read."""
    attempts: int = 0
    reason: str = ""
    """For people: why the task is in its state (failed, blocked, invalid, waiting)."""
    last_reason: Reason | None = None
    """How the task's last attempt ended, when it failed."""
    blocker: Blocker | None = None
    waiting_for: tuple[str, ...] = ()
    spec: Spec | None = None

    @property
    def runnable(self) -> bool:
        """Pending, enabled and every dependency done."""
        return (
            self.state is State.PENDING
            and self.spec is not None
            and self.spec.enabled
            and not self.waiting_for
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state.value,
            "attempts": self.attempts,
            "priority": self.priority,
            "title": self.title,
            "reason": self.reason,
            "failure_class": self.last_reason.value if self.last_reason else None,
            "blocked_by": (
                {"kind": self.blocker.kind.value, "on": self.blocker.on} if self.blocker else None
            ),
            "path": self.path,
        }


def plan(
    spec_set: SpecSet,
    done: set[str],
    records: Mapping[str, TaskRecord],
    running: Collection[str] = (),
) -> list[Task]:
    """Every task with its state, in the order ralph would run them."""
    specs = {spec.id: spec for spec in spec_set.specs}
    cyclic = _cycles(specs, done)
    known = _Known(done, running, {item.id for item in spec_set.invalid}, cyclic, {})
    for spec_id in _dependency_order(specs, cyclic, done):
        record = records.get(spec_id, TaskRecord())
        known.resolved[spec_id] = _task(specs[spec_id], record, known)
    tasks = sorted(known.resolved.values(), key=lambda task: (task.priority or 0, task.path))
    tasks += [
        Task(item.id, State.INVALID, item.path, reason=item.reason) for item in spec_set.invalid
    ]
    return tasks


def next_task(tasks: Iterable[Task]) -> Task | None:
    """The runnable task with the lowest (priority, path), if any."""
    return next((task for task in tasks if task.runnable), None)  # already in that order


@dataclass(frozen=True)
class _Known:
    """What a task's state depends on besides its own spec and record."""

    done: set[str]
    running: Collection[str]
    invalid: set[str]
    cyclic: Mapping[str, str]
    resolved: dict[str, Task]
    """The tasks planned so far: every dependency comes before its dependents."""


def _task(spec: Spec, record: TaskRecord, known: _Known) -> Task:
    """The task for ``spec``, its dependencies already resolved."""
    done = known.done
    task = Task(
        id=spec.id,
        state=State.PENDING,
        path=spec.path,
        title=spec.title,
        priority=spec.priority,
        attempts=record.attempts,
        last_reason=record.last_reason,
        spec=spec,
    )
    if spec.id in done:
        return replace(task, state=State.DONE)
    if spec.id in known.running:
        return replace(task, state=State.RUNNING)
    if record.failed:
        return replace(task, state=State.FAILED, reason=record.reason)
    blocker = _blocker(spec, known)
    if blocker is not None:
        return replace(task, state=State.BLOCKED, reason=blocker.describe(), blocker=blocker)
    waiting = tuple(dep for dep in spec.depends_on if dep not in done)
    if not spec.enabled:
        return replace(task, reason="disabled (enabled: false)", waiting_for=waiting)
    if waiting:
        return replace(task, reason=f"waiting for {', '.join(waiting)}", waiting_for=waiting)
    return task


def _blocker(spec: Spec, known: _Known) -> Blocker | None:
    """Why a dependency of ``spec`` can never become done, if one can't."""
    if spec.id in known.cyclic:
        return Blocker(BlockKind.CYCLE, known.cyclic[spec.id])
    for dep in spec.depends_on:
        if dep in known.done:
            continue
        if dep in known.invalid:
            return Blocker(BlockKind.INVALID, dep)
        if dep not in known.resolved:
            return Blocker(BlockKind.UNKNOWN, dep)
        dep_task = known.resolved[dep]
        if dep_task.state is State.FAILED:
            return Blocker(BlockKind.FAILED, dep)
        if dep_task.state is State.BLOCKED:
            return Blocker(BlockKind.BLOCKED, dep)
        if dep_task.spec is not None and not dep_task.spec.enabled:
            return Blocker(BlockKind.DISABLED, dep)
    return None


def _cycles(specs: Mapping[str, Spec], done: set[str]) -> dict[str, str]:
    """Map every task on a dependency cycle to a description of its cycle.

    A done task waits for nothing and is waited for by nobody, so it breaks any cycle.
    """
    graph = {
        spec_id: {d for d in spec.depends_on if d in specs and d not in done}
        for spec_id, spec in specs.items()
        if spec_id not in done
    }
    found: dict[str, str] = {}
    while True:
        try:
            tuple(graphlib.TopologicalSorter(graph).static_order())
            return found
        except graphlib.CycleError as exc:
            cycle: list[str] = exc.args[1]
            description = " -> ".join(cycle)
            for node in cycle:
                found.setdefault(node, description)
                graph[node] = set()


def _dependency_order(
    specs: Mapping[str, Spec], cyclic: Mapping[str, str], done: set[str]
) -> list[str]:
    """Task ids with every dependency before its dependents (cycles and done edges cut)."""
    graph = {
        spec_id: set()
        if spec_id in cyclic or spec_id in done
        else {d for d in spec.depends_on if d in specs and d not in done}
        for spec_id, spec in specs.items()
    }
    return list(graphlib.TopologicalSorter(graph).static_order())
