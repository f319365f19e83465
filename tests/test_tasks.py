"""Task states and the next task: pure planning over specs, done ids and recorded failures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import Project

from ralph.backlog.specs import InvalidSpec, Spec, SpecSet
from ralph.backlog.tasks import State, Task, TaskRecord, next_task, plan


def spec(spec_id: str, *depends_on: str, **fields: Any) -> Spec:
    """A valid spec at specs/<id>.md."""
    return Spec(
        id=spec_id,
        title=fields.pop("title", f"Task {spec_id}"),
        path=fields.pop("path", f"specs/{spec_id}.md"),
        body="Do it.\n",
        digest=f"digest-{spec_id}",
        depends_on=depends_on,
        **fields,
    )


def invalid(spec_id: str) -> InvalidSpec:
    """An unreadable spec at specs/<id>.md."""
    return InvalidSpec(spec_id, f"specs/{spec_id}.md", f"specs/{spec_id}.md: broken")


def states(
    *items: Spec | InvalidSpec,
    done: set[str] | None = None,
    failed: set[str] | None = None,
    running: str | None = None,
) -> dict[str, tuple[State, str]]:
    """Plan these specs and return each task's (state, reason)."""
    tasks = plan_of(*items, done=done, failed=failed, running=running)
    return {task.id: (task.state, task.reason) for task in tasks}


def plan_of(
    *items: Spec | InvalidSpec,
    done: set[str] | None = None,
    failed: set[str] | None = None,
    running: str | None = None,
) -> list[Task]:
    """Plan these specs with the given done ids, failed ids and running task."""
    spec_set = SpecSet(
        tuple(item for item in items if isinstance(item, Spec)),
        tuple(item for item in items if isinstance(item, InvalidSpec)),
    )
    records = {task_id: TaskRecord(3, True, "failed 3 attempt(s)") for task_id in failed or ()}
    return plan(spec_set, done or set(), records, [running] if running else [])


def next_id(*items: Spec | InvalidSpec, **kwargs: Any) -> str | None:
    """The id of the task ralph would run next, or None."""
    task = next_task(plan_of(*items, **kwargs))
    return task.id if task else None


# --- which task is next ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([spec("b"), spec("a")], "a"),
        ([spec("a", priority=50), spec("b", priority=10)], "b"),
        ([spec("z", priority=1), spec("a")], "z"),
        ([spec("x", path="specs/b.md"), spec("y", path="specs/a.md")], "y"),
        ([spec("b", priority=-1), spec("a", priority=0)], "b"),
        ([], None),
    ],
)
def test_next_task_is_lowest_priority_then_path(items: list[Spec], expected: str | None) -> None:
    """The next task is the runnable one with the lowest (priority, path)."""
    assert next_id(*items) == expected


def test_plan_orders_tasks_by_priority_then_path_and_invalid_last() -> None:
    """plan lists valid tasks by (priority, path), then the invalid ones."""
    tasks = plan_of(invalid("aaa"), spec("c"), spec("b", priority=1), spec("a"))
    assert [task.id for task in tasks] == ["b", "a", "c", "aaa"]


def test_dependency_waits_until_done() -> None:
    """A task waits, pending, until every dependency is done; then it is next."""
    items = [spec("app", "db", priority=1), spec("db", priority=9)]
    assert states(*items)["app"] == (State.PENDING, "waiting for db")
    assert next_id(*items) == "db"
    assert states(*items, done={"db"})["app"] == (State.PENDING, "")
    assert next_id(*items, done={"db"}) == "app"


def test_task_waiting_on_a_running_task_waits() -> None:
    """A dependency that is running is waited for, not a block."""
    result = states(spec("app", "db"), spec("db"), running="db")
    assert result == {"db": (State.RUNNING, ""), "app": (State.PENDING, "waiting for db")}


def test_waiting_chains_through_several_levels() -> None:
    """c waits for b which waits for a; only a is next."""
    items = [spec("c", "b"), spec("b", "a"), spec("a", priority=200)]
    result = states(*items)
    assert result["b"] == (State.PENDING, "waiting for a")
    assert result["c"] == (State.PENDING, "waiting for b")
    assert next_id(*items) == "a"


@pytest.mark.parametrize(
    ("others", "kwargs", "reason"),
    [
        ([], {}, "depends on unknown task db"),
        ([invalid("db")], {}, "depends on db, whose spec is invalid"),
        ([spec("db")], {"failed": {"db"}}, "depends on db, which is failed"),
        ([spec("db", "gone")], {}, "depends on db, which is blocked"),
        ([spec("db", enabled=False)], {}, "depends on db, which is disabled"),
    ],
)
def test_dependency_that_cannot_be_done_blocks(
    others: list[Spec | InvalidSpec], kwargs: dict[str, Any], reason: str
) -> None:
    """A dependency that is unknown, invalid, failed, blocked or disabled blocks its dependents."""
    items = [spec("app", "db"), *others]
    assert states(*items, **kwargs)["app"] == (State.BLOCKED, reason)
    assert next_id(*items, **kwargs) != "app"


def test_done_dependency_counts_even_if_its_spec_is_gone_or_invalid() -> None:
    """A dependency committed on the branch is done, whatever its spec file says now."""
    assert states(spec("app", "db"), done={"db"})["app"] == (State.PENDING, "")
    assert states(spec("app", "db"), invalid("db"), done={"db"})["app"] == (State.PENDING, "")


@pytest.mark.parametrize(
    ("items", "cyclic"),
    [
        ([spec("a", "b"), spec("b", "a")], {"a", "b"}),
        ([spec("a", "a")], {"a"}),
        ([spec("a", "b"), spec("b", "c"), spec("c", "a")], {"a", "b", "c"}),
    ],
)
def test_cycle_blocks_its_members_and_names_the_cycle(items: list[Spec], cyclic: set[str]) -> None:
    """Every task on a dependency cycle (a self-cycle too) is blocked, the reason naming it."""
    result = states(*items, spec("free"))
    for task_id in cyclic:
        state, reason = result[task_id]
        assert state is State.BLOCKED
        assert reason.startswith("dependency cycle: ")
        assert all(member in reason for member in cyclic)
    assert result["free"] == (State.PENDING, "")
    assert next_id(*items, spec("free")) == "free"


def test_dependents_of_a_cycle_are_blocked_and_unrelated_tasks_run() -> None:
    """A task depending on a cycle is blocked; tasks outside it still run."""
    items = [spec("a", "b"), spec("b", "a"), spec("c", "a"), spec("d", priority=500)]
    result = states(*items)
    assert result["c"] == (State.BLOCKED, "depends on a, which is blocked")
    assert next_id(*items) == "d"


def test_done_task_breaks_a_cycle() -> None:
    """A cycle through a task that is already done is no cycle: the other task can run."""
    items = [spec("a", "b"), spec("b", "a")]
    assert states(*items, done={"a"}) == {"a": (State.DONE, ""), "b": (State.PENDING, "")}
    assert next_id(*items, done={"a"}) == "b"


def test_disabled_task_is_never_picked() -> None:
    """A task with enabled: false stays pending with a reason and is never the next task."""
    items = [spec("off", priority=1, enabled=False), spec("on", priority=2)]
    assert states(*items)["off"] == (State.PENDING, "disabled (enabled: false)")
    assert next_id(*items) == "on"
    assert next_id(spec("off", enabled=False)) is None


@pytest.mark.parametrize(
    ("item", "kwargs"),
    [
        (spec("x", enabled=False), {}),
        (spec("x", "missing"), {}),
        (spec("x", "x"), {}),
        (spec("x"), {"failed": {"x"}}),
        (spec("x"), {"running": "x"}),
        (spec("x", "y"), {"failed": {"x", "y"}}),
    ],
)
def test_done_wins_over_everything(item: Spec, kwargs: dict[str, Any]) -> None:
    """A task committed on the branch is done, whatever else its spec or records say."""
    assert states(item, done={"x"}, **kwargs)["x"] == (State.DONE, "")
    assert next_id(item, done={"x"}, **kwargs) is None


def test_running_task_is_running_and_not_next() -> None:
    """The task an attempt is running for is `running` and not offered again."""
    items = [spec("a", priority=1), spec("b", priority=2)]
    assert states(*items, running="a")["a"] == (State.RUNNING, "")
    assert next_id(*items, running="a") == "b"


def test_failed_task_keeps_its_reason_and_is_not_next() -> None:
    """A failed task stays failed with its recorded reason and is skipped."""
    items = [spec("a", priority=1), spec("b", priority=2)]
    assert states(*items, failed={"a"})["a"] == (State.FAILED, "failed 3 attempt(s)")
    assert next_id(*items, failed={"a"}) == "b"


def test_invalid_specs_are_listed_as_invalid() -> None:
    """An unreadable spec appears as an invalid task with its reason and path, never next."""
    tasks = plan_of(invalid("broken"))
    assert [(t.id, t.state, t.path, t.reason) for t in tasks] == [
        ("broken", State.INVALID, "specs/broken.md", "specs/broken.md: broken")
    ]
    assert next_task(tasks) is None


def test_task_carries_its_spec_record_and_fields() -> None:
    """A planned task has its spec's title, priority and path and the recorded attempts."""
    the_spec = spec("a", priority=7, title="Do A")
    (task,) = plan(SpecSet((the_spec,), ()), set(), {"a": TaskRecord(attempts=2)})
    assert (task.title, task.priority, task.path, task.attempts) == ("Do A", 7, "specs/a.md", 2)
    assert task.spec is the_spec
    assert task.state is State.PENDING


# --- through the command line ---------------------------------------------------------------


def test_status_json_has_every_field(project: Project) -> None:
    """`status --json` gives each task id, state, attempts, priority, title, reason, class, path."""
    project.spec("first", "# First task\n\nDo it.\n", priority=1)
    project.spec("second", "# Second task\n\nDo it.\n", depends_on=["first"])
    project.spec("orphan", depends_on="ghost")
    project.write("specs/broken.md", "---\npriority: [\n---\n# Broken\n")
    project.commit()
    result = project.ralph("status", "--json", check_code=0)
    tasks = json.loads(result.stdout)["tasks"]
    assert [task["id"] for task in tasks] == ["first", "orphan", "second", "broken"]
    fields = {
        "id",
        "state",
        "attempts",
        "priority",
        "title",
        "reason",
        "failure_class",
        "blocked_by",
        "path",
        "worker",
        "since",
        "interrupted_attempt",
        "held_by",
        "agent_event",
    }
    assert all(set(task) == fields for task in tasks)
    by_id = {task["id"]: task for task in tasks}
    assert by_id["first"] == {
        "id": "first",
        "state": "pending",
        "attempts": 0,
        "priority": 1,
        "title": "First task",
        "reason": "",
        "failure_class": None,
        "blocked_by": None,
        "path": "specs/first.md",
        "worker": None,
        "since": None,
        "interrupted_attempt": None,
        "held_by": None,
        "agent_event": None,
    }
    assert (by_id["second"]["state"], by_id["second"]["reason"]) == ("pending", "waiting for first")
    assert (by_id["orphan"]["state"], by_id["orphan"]["reason"]) == (
        "blocked",
        "depends on unknown task ghost",
    )
    assert by_id["orphan"]["blocked_by"] == {"kind": "unknown", "on": "ghost"}
    assert by_id["broken"]["priority"] is None
    assert by_id["broken"]["state"] == "invalid"
    assert by_id["broken"]["reason"].startswith("specs/broken.md: ")
    assert by_id["broken"]["path"] == "specs/broken.md"


def test_status_after_a_run_shows_done_and_failed(project: Project) -> None:
    """After `run --once`, status shows the committed task done and the failing one failed."""
    project.spec("good", priority=1)
    project.attempts("good", {"steps": [{"write": "good.txt", "content": "ok\n"}]})
    project.spec("bad", priority=2)
    project.attempts("bad", {"steps": [{"write": "bad.txt", "content": "x\n"}], "exit": 1})
    project.spec("after", depends_on="bad", priority=3)
    project.configure(max_attempts=2)
    project.commit()
    project.ralph("run", "--once", check_code=1)
    status = project.status_json()
    assert (status["good"]["state"], status["good"]["attempts"]) == ("done", 1)
    assert (status["bad"]["state"], status["bad"]["attempts"]) == ("failed", 2)
    assert status["bad"]["reason"].startswith("failed 2 attempt(s)")
    assert (status["after"]["state"], status["after"]["reason"]) == (
        "blocked",
        "depends on bad, which is failed",
    )
