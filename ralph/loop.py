"""The loop: pick the next task, run attempts until one passes the gate or none are left,
then the next task; when the backlog is empty, wait for new specs (or stop, with --once).
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import structlog
from anyio import to_thread

from ralph import repo
from ralph.attempt import Worker, max_attempts, run_attempt
from ralph.errors import RepositoryError
from ralph.recovery import recover_interrupted_attempt
from ralph.specs import load_specs
from ralph.tasks import State, Task, next_task, plan

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class RunOptions:
    once: bool = False
    max_tasks: int | None = None


async def prepare(worker: Worker) -> None:
    """Clean up after a killed ralph, then refuse a tree with changes ralph didn't make."""
    await recover_interrupted_attempt(worker)
    foreign = await foreign_changes(worker)
    if foreign:
        raise RepositoryError(foreign)


async def foreign_changes(worker: Worker) -> str:
    """Describe uncommitted changes outside specs_dir (ralph won't work over them), or ''.

    Specs are the user's input and may be new and uncommitted; anything else that is
    uncommitted is someone's work, which ralph never mixes into a task or rolls back.
    """
    specs = worker.settings.specs_dir.as_posix() + "/"
    dirty = [
        path
        for path in await to_thread.run_sync(repo.dirty_paths, worker.root)
        if not path.startswith(specs)
    ]
    if not dirty:
        return ""
    shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
    return (
        f"uncommitted changes in {worker.root}: {shown}; commit or stash them first "
        "(ralph never touches work it did not make)"
    )


async def run(worker: Worker, options: RunOptions) -> int:
    """Work through the backlog; return the exit code the contract gives."""
    worker.events.emit("run_started", once=options.once, branch=worker.branch)
    attempted = 0
    reported: set[str] = set()
    while not worker.stop.is_requested:
        if options.max_tasks is not None and attempted >= options.max_tasks:
            break
        tasks = await scan(worker)
        _report_invalid(worker, tasks, reported)
        task = next_task(tasks)
        if task is not None:
            foreign = await foreign_changes(worker)
            if foreign and options.once:
                raise RepositoryError(foreign)
            if foreign:
                log.warning("ralph.waiting_for_clean_tree", detail=foreign)
                await idle(worker)
                continue
            await run_task(worker, task)
            attempted += 1
        elif options.once:
            break
        else:
            await idle(worker)
    code = 0 if worker.stop.is_requested else exit_code(await scan(worker))
    worker.events.emit("run_finished", tasks_attempted=attempted, exit_code=code)
    log.info("ralph.run_finished", tasks_attempted=attempted, exit_code=code)
    return code


async def run_task(worker: Worker, task: Task) -> None:
    """Attempts with a fresh agent each until one is committed or the attempts run out."""
    spec = task.spec
    assert spec is not None
    limit = max_attempts(worker, spec)
    with structlog.contextvars.bound_contextvars(task=spec.id):
        worker.events.emit(
            "task_started", task=spec.id, title=spec.title, attempts_so_far=task.attempts
        )
        log.info("ralph.task_started", title=spec.title)
        for attempt in range(task.attempts + 1, limit + 1):
            with structlog.contextvars.bound_contextvars(attempt=attempt):
                result = await run_attempt(worker, spec, attempt)
            if result.status == "interrupted":
                return
            worker.state.record_attempt(spec.id, spec.digest, attempt, result.summary)
            if result.status in ("committed", "already_done"):
                worker.events.emit(
                    "task_done", task=spec.id, attempts=attempt, commit=result.commit
                )
                log.info(
                    "ralph.task_committed", attempts=attempt, commit=(result.commit or "")[:12]
                )
                return
            if worker.stop.is_requested:
                return
        reason = f"failed {limit} attempt(s); last: {_last_reason(worker, spec.id, spec.digest)}"
        worker.state.mark_failed(spec.id, spec.digest, reason)
        worker.events.emit("task_failed", task=spec.id, attempts=limit, reason=reason)
        log.error("ralph.task_failed", attempts=limit, reason=reason)


def _last_reason(worker: Worker, task_id: str, digest: str) -> str:
    summary = worker.state.last_failure(task_id, digest)
    return summary.splitlines()[0] if summary else "unknown"


async def scan(worker: Worker) -> list[Task]:
    """Every task's state, from the specs, git history and ``.ralph/state.json``."""
    settings = worker.settings

    def read() -> list[Task]:
        spec_set = load_specs(worker.root / settings.specs_dir, f"{settings.specs_dir.as_posix()}/")
        done = repo.done_tasks(worker.root)
        digests = {spec.id: spec.digest for spec in spec_set.specs}
        return plan(spec_set, done, worker.state.records(digests))

    return await to_thread.run_sync(read)


def _report_invalid(worker: Worker, tasks: list[Task], reported: set[str]) -> None:
    """Report each bad spec once per run; the loop skips it and goes on."""
    for task in tasks:
        if task.state is State.INVALID and task.reason not in reported:
            reported.add(task.reason)
            worker.events.emit("spec_invalid", task=task.id, path=task.path, reason=task.reason)
            log.warning("ralph.spec_invalid", path=task.path, reason=task.reason)


async def idle(worker: Worker) -> None:
    """Wait for new specs: until the poll interval passes or a stop is requested."""
    with anyio.move_on_after(worker.settings.poll_interval):
        await worker.stop.requested.wait()


def exit_code(tasks: list[Task]) -> int:
    """0 when nothing failed, is blocked or invalid; 1 otherwise."""
    bad = {State.FAILED, State.BLOCKED, State.INVALID}
    return 1 if any(task.state in bad for task in tasks) else 0
