"""Task states: what each spec is now (pending, running, done, failed, blocked, invalid).

Pure functions over the specs, the set of task ids committed on the branch, and the
recorded failures; nothing here touches the disk.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from ralph.backlog.specs import Spec, SpecSet


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    BLOCKED = "blocked"
    INVALID = "invalid"


@dataclass(frozen=True)
class TaskRecord:
    """What ralph remembers of a task between runs (see ralph.state)."""

    attempts: int = 0
    failed: bool = False
    reason: str = ""
    failure_class: str = ""


@dataclass(frozen=True)
class Task:
    """One line of ``ralph status``."""

    id: str
    state: State
    path: str
    title: str = ""
    priority: int = 0
    attempts: int = 0
    reason: str = ""
    failure_class: str = ""
    spec: Spec | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state.value,
            "attempts": self.attempts,
            "priority": self.priority,
            "title": self.title,
            "reason": self.reason,
            "failure_class": self.failure_class or None,
            "path": self.path,
        }


def plan(
    spec_set: SpecSet,
    done: set[str],
    records: Mapping[str, TaskRecord],
    running: str | None = None,
) -> list[Task]:
    """Every task with its state, in the order ralph would run them."""
    specs = {spec.id: spec for spec in spec_set.specs}
    invalid = {item.id for item in spec_set.invalid}
    states: dict[str, Task] = {}
    cyclic = _cycles(specs, done)
    for spec_id in _dependency_order(specs, cyclic, done):
        spec = specs[spec_id]
        record = records.get(spec_id, TaskRecord())
        state, reason = _state_of(spec, record, done, running, states, invalid, cyclic)
        states[spec_id] = Task(
            id=spec.id,
            state=state,
            path=spec.path,
            title=spec.title,
            priority=spec.priority,
            attempts=record.attempts,
            reason=reason,
            failure_class=record.failure_class,
            spec=spec,
        )
    tasks = sorted(states.values(), key=lambda task: (task.priority, task.path))
    tasks += [
        Task(item.id, State.INVALID, item.path, reason=item.reason) for item in spec_set.invalid
    ]
    return tasks


def next_task(tasks: list[Task]) -> Task | None:
    """The runnable task with the lowest (priority, path), if any."""
    runnable = [task for task in tasks if task.state is State.PENDING and _enabled(task)]
    for task in runnable:  # already sorted by (priority, path)
        if not task.reason:
            return task
    return None


def _enabled(task: Task) -> bool:
    return task.spec is not None and task.spec.enabled


def _state_of(
    spec: Spec,
    record: TaskRecord,
    done: set[str],
    running: str | None,
    resolved: Mapping[str, Task],
    invalid: set[str],
    cyclic: Mapping[str, str],
) -> tuple[State, str]:
    if spec.id in done:
        return State.DONE, ""
    if spec.id == running:
        return State.RUNNING, ""
    if record.failed:
        return State.FAILED, record.reason
    if spec.id in cyclic:
        return State.BLOCKED, f"dependency cycle: {cyclic[spec.id]}"
    waiting = []
    for dep in spec.depends_on:
        if dep in done:
            continue
        blocker = _blocker(dep, resolved, invalid)
        if blocker:
            return State.BLOCKED, blocker
        waiting.append(dep)
    if not spec.enabled:
        return State.PENDING, "disabled (enabled: false)"
    if waiting:
        return State.PENDING, f"waiting for {', '.join(waiting)}"
    return State.PENDING, ""


def _blocker(dep: str, resolved: Mapping[str, Task], invalid: set[str]) -> str:
    """Why a dependency that isn't done can never become done, or "" if it still can."""
    if dep in invalid:
        return f"depends on {dep}, whose spec is invalid"
    if dep not in resolved:
        return f"depends on unknown task {dep}"
    dep_task = resolved[dep]
    if dep_task.state in (State.FAILED, State.BLOCKED):
        return f"depends on {dep}, which is {dep_task.state.value}"
    if dep_task.spec is not None and not dep_task.spec.enabled:
        return f"depends on {dep}, which is disabled"
    return ""


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
