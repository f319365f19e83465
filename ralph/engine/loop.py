"""The loop: pick the next task, run it, next; when the backlog is empty, wait for new specs
(or stop, with --once). A run ends only for a reason it names (``RunEnd``).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import structlog
from anyio import to_thread
from watchfiles import awatch

from ralph.backlog.snapshot import Backlog
from ralph.backlog.tasks import State
from ralph.engine.ledger import BreakerTripped, Ledger, RunEnd, RunOptions
from ralph.engine.limits import LimitTooFar
from ralph.engine.recovery import recover_interrupted_attempt
from ralph.engine.task import AgentAuthFailed, run_task
from ralph.engine.worker import Worker
from ralph.errors import RalphError, RepositoryError
from ralph.vcs import repo

log = structlog.get_logger("ralph")

__all__ = ["RunOptions", "prepare", "run"]


async def run(worker: Worker, options: RunOptions) -> int:
    """Work through the backlog; return the exit code the contract gives."""
    with worker.spans.span(
        "ralph.run", run_id=worker.events.run_id, once=options.once, branch=worker.branch
    ) as annotate:
        code = await _run(worker, options)
        annotate(exit_code=code)
        return code


async def _run(worker: Worker, options: RunOptions) -> int:
    worker.events.emit("run_started", once=options.once, branch=worker.branch)
    ledger = Ledger(worker, options)
    try:
        async with anyio.create_task_group() as group:
            wakeup, unwatch = Wakeup(), anyio.Event()
            if not options.once:
                specs = worker.root / worker.settings.specs_dir
                group.start_soon(watch_specs, specs, wakeup, unwatch)
            try:
                end = await _work(worker, options, ledger, wakeup)
            finally:
                unwatch.set()  # the watcher's thread sees this within one step
    except* RalphError as group:
        end, code = _end_of(group)
        _finished(worker, ledger, end, code)
        raise
    if end in (RunEnd.SIGNAL, RunEnd.DEADLINE):
        code = 0
    else:
        code = (await to_thread.run_sync(worker.backlog)).exit_code()
    _finished(worker, ledger, end, code)
    return code


async def _work(worker: Worker, options: RunOptions, ledger: Ledger, wakeup: Wakeup) -> RunEnd:
    """Tasks until something ends the run; an idle daemon waits, it never ends by itself."""
    reported: set[str] = set()
    while True:
        if worker.stop.is_requested:
            return RunEnd.DEADLINE if worker.stop.reason == "deadline" else RunEnd.SIGNAL
        if (end := ledger.enough()) is not None:
            return end
        wakeup.clear()  # a change from now on wakes the idle wait below
        backlog = await to_thread.run_sync(worker.backlog)
        _report_invalid(worker, backlog, reported)
        task = backlog.next()
        if task is None:
            if options.once:
                return RunEnd.BACKLOG_DONE
            await idle(worker, wakeup, "idle: waiting for new specs")
        elif not await _tree_is_clean(worker, options):
            await idle(worker, wakeup, "waiting for a clean tree")
        else:
            ledger.record(await run_task(worker, task))


def _finished(worker: Worker, ledger: Ledger, end: RunEnd, code: int | None) -> None:
    worker.events.emit(
        "run_finished", tasks_attempted=ledger.attempted, exit_code=code, reason=end.value
    )
    log.info(
        "ralph.run_finished", tasks_attempted=ledger.attempted, exit_code=code, reason=end.value
    )


_END_OF_ERROR: dict[type[RalphError], RunEnd] = {
    BreakerTripped: RunEnd.BREAKER,
    AgentAuthFailed: RunEnd.AUTH,
    LimitTooFar: RunEnd.LIMIT_TOO_FAR,
}


def _end_of(group: BaseExceptionGroup[RalphError]) -> tuple[RunEnd, int]:
    """Why an expected error ended the run, and the exit code it gives."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, RalphError)
    return _END_OF_ERROR.get(type(first), RunEnd.ERROR), first.exit_code


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


async def _tree_is_clean(worker: Worker, options: RunOptions) -> bool:
    foreign = await foreign_changes(worker)
    if foreign and options.once:
        raise RepositoryError(foreign)
    if foreign:
        log.warning("ralph.waiting_for_clean_tree", detail=foreign)
    return not foreign


def _report_invalid(worker: Worker, backlog: Backlog, reported: set[str]) -> None:
    """Report each bad spec once per run; the loop skips it and goes on."""
    for task in backlog:
        if task.state is State.INVALID and task.reason not in reported:
            reported.add(task.reason)
            worker.events.emit("spec_invalid", task=task.id, path=task.path, reason=task.reason)
            log.warning("ralph.spec_invalid", path=task.path, reason=task.reason)


class Wakeup:
    """Set when the idle daemon has something new to look at (a spec changed)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def idle(worker: Worker, wakeup: Wakeup, status: str) -> None:
    """Wait until a spec changes, the poll interval passes, or a stop is requested.

    Returning is never a reason to end the run: the loop looks again. poll_interval stays
    the upper bound for what the watcher can't see (a commit that makes a task runnable,
    a network file system).
    """
    worker.notify.status(status)
    with anyio.move_on_after(worker.settings.poll_interval):
        async with anyio.create_task_group() as group:

            async def stopped() -> None:
                await worker.stop.requested.wait()
                group.cancel_scope.cancel()

            async def woken() -> None:
                await wakeup.wait()
                group.cancel_scope.cancel()

            group.start_soon(stopped)
            group.start_soon(woken)


async def watch_specs(specs: Path, wakeup: Wakeup, unwatch: anyio.Event) -> None:
    """Until ``unwatch`` is set: set ``wakeup`` at every change under ``specs`` (inotify).

    The watcher gets an event of its own: awatch sets the event it is given when it ends,
    and ralph's stop event must only ever mean that someone asked ralph to stop.
    """
    try:
        async for _changes in awatch(specs, stop_event=unwatch, debounce=100, step=100):
            wakeup.set()
    except (OSError, RuntimeError) as exc:  # gone, or no watcher here: poll_interval rules
        log.debug("ralph.spec_watch_unavailable", error=str(exc))
