"""The loop: pick runnable tasks, give each to a free worker, land what passes, next; when
the backlog is empty, wait for new specs (or stop, with --once). A run ends only for a
reason it names (``RunEnd``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from anyio import to_thread
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from watchfiles import awatch

from ralph.backlog.snapshot import Backlog
from ralph.backlog.tasks import State, Task
from ralph.engine.landing import MergeQueue
from ralph.engine.ledger import BreakerTripped, Ledger, RunEnd, RunOptions, TaskOutcome
from ralph.engine.limits import LimitTooFar, Pause
from ralph.engine.recovery import recover
from ralph.engine.retention import prune_attempts, prune_daily
from ralph.engine.task import AgentAuthFailed, run_task
from ralph.engine.worker import Run, Worker
from ralph.errors import RalphError, RepositoryError
from ralph.memory.learnings import audit
from ralph.runtime import processes
from ralph.vcs import trees

log = structlog.get_logger("ralph")

__all__ = ["RunOptions", "prepare", "run"]


async def prepare(the_run: Run) -> None:
    """Clean up after a killed ralph, refuse a tree with changes ralph didn't make, and
    keep exactly the worktrees this run will use."""
    await recover(the_run)
    foreign = await foreign_changes(the_run)
    if foreign:
        raise RepositoryError(foreign)
    await to_thread.run_sync(_tidy_worktrees, the_run)
    await to_thread.run_sync(prune_attempts, the_run)
    await to_thread.run_sync(_audit_memory, the_run)


def _audit_memory(the_run: Run) -> None:
    """Say once per run when the memory file (or a mirror) holds text the screen wouldn't
    let in: agents read it before every task."""
    findings = audit(the_run.root, the_run.settings)
    if findings:
        log.warning(
            "ralph.memory_findings",
            count=len(findings),
            first=str(findings[0])[:300],
            detail="see `ralph learnings audit`",
        )


async def foreign_changes(the_run: Run) -> str:
    """Describe uncommitted changes outside specs_dir (ralph won't start over them), or ''.

    Specs are the user's input and may be new and uncommitted; anything else uncommitted at
    start is someone's work, which ralph never mixes into a task or rolls back.
    """
    specs = the_run.settings.specs_dir.as_posix() + "/"
    dirty = [
        path
        for path in await to_thread.run_sync(trees.dirty_paths, the_run.git)
        if not path.startswith(specs)
    ]
    if not dirty:
        return ""
    shown = ", ".join(dirty[:10]) + (f" and {len(dirty) - 10} more" if len(dirty) > 10 else "")
    return (
        f"uncommitted changes in {the_run.root}: {shown}; commit or stash them first "
        "(ralph never touches work it did not make)"
    )


def _tidy_worktrees(the_run: Run) -> None:
    """Remove worktrees of workers this run won't have; git forgets any that are gone."""
    folder = the_run.ralph_dir / "worktrees"
    wanted = {f"w{n}" for n in range(the_run.settings.workers)}
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name not in wanted:
                trees.remove_worktree(the_run.git, path)
    trees.prune_worktrees(the_run.git)


async def run(the_run: Run, options: RunOptions) -> int:
    """Work through the backlog; return the exit code the contract gives."""
    with the_run.spans.span(
        "ralph.run", run_id=the_run.events.run_id, once=options.once, branch=the_run.branch
    ) as annotate:
        code = await _run(the_run, options)
        annotate(exit_code=code)
        return code


async def _run(the_run: Run, options: RunOptions) -> int:
    the_run.events.emit("run_started", once=options.once, branch=the_run.branch)
    ledger = Ledger(the_run, options)
    try:
        async with anyio.create_task_group() as group:
            wakeup, unwatch = Wakeup(), anyio.Event()
            if not options.once:
                group.start_soon(prune_daily, the_run)
                specs = the_run.root / the_run.settings.specs_dir
                the_run.state.wake_dir.mkdir(parents=True, exist_ok=True)
                watched = [specs, the_run.state.wake_dir]
                group.start_soon(watch_specs, watched, wakeup, unwatch)
            try:
                end = await Loop(the_run, options, ledger, wakeup).work()
            finally:
                unwatch.set()  # the watcher's thread sees this within one step
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await _no_stragglers()
    except* RalphError as errors:
        end, code = _end_of(errors)
        _finished(the_run, ledger, end, code)
        raise
    if end in (RunEnd.SIGNAL, RunEnd.DEADLINE):
        code = 0
    else:
        code = (await to_thread.run_sync(the_run.backlog)).exit_code()
    _finished(the_run, ledger, end, code)
    return code


async def _no_stragglers() -> None:
    """No agent or check runs now: anything still orphaned onto ralph goes before it exits
    (where ralph is the subreaper; elsewhere such orphans were never ralph's to see)."""
    killed = await to_thread.run_sync(processes.stop_orphans)
    if killed:
        log.warning("ralph.stragglers_stopped", processes=killed)


@dataclass(frozen=True)
class Finished:
    """A worker's report to the loop: which task, and how its turn ended."""

    worker: Worker
    task: Task
    outcome: TaskOutcome | None
    error: RalphError | None = None


OTHERS_POLL = 1.0
"""Seconds between looks at the shared queue while a batch run waits for other processes'
tasks (they may land, or come back to the queue for this one to take)."""


class Loop:
    """The run's workers and the tasks they hold; decisions stay in ``work``."""

    def __init__(self, the_run: Run, options: RunOptions, ledger: Ledger, wakeup: Wakeup) -> None:
        self.run, self.options, self.ledger, self.wakeup = the_run, options, ledger, wakeup
        self.queue, self.pause = MergeQueue(), Pause()
        self.free = [Worker(the_run, n) for n in reversed(range(the_run.settings.workers))]
        self.running: dict[str, Finished] = {}
        self.reported: set[str] = set()
        self.started = 0
        self.others_busy = False
        """With --once and a queue: nothing to do here, but other processes hold tasks."""

    async def work(self) -> RunEnd:
        """Tasks until something ends the run; an idle daemon waits, it never ends by itself."""
        send, receive = anyio.create_memory_object_stream[Finished](100)
        end: RunEnd | None = None
        error: RalphError | None = None
        async with anyio.create_task_group() as group, receive:
            while True:
                end = end or await self._why_stop()
                if end is not None and not self.running:
                    break
                if end is None:
                    self.wakeup.clear()  # a change from now on wakes the wait below
                    backlog = await to_thread.run_sync(self.run.backlog, list(self.running))
                    self._report_invalid(backlog)
                    started = await self._start(group, send, backlog)
                    nothing = not started and not self.running
                    self.others_busy = False
                    if nothing and self.options.once:
                        self.others_busy = await self._others_hand_back()
                        if not self.others_busy:
                            end = RunEnd.BACKLOG_DONE
                            continue
                    if not started and not self.running:
                        self.run.notify.status("idle: waiting for new specs")
                finished = await self._next_finished(receive)
                for done in finished:  # every one is accounted for, even after an error
                    failure = await self._account(done)
                    error = error or failure
                if error is not None:
                    self.run.stop.request("error")
                    end = end or RunEnd.ERROR
        if error is not None:
            raise error
        assert end is not None
        return end

    async def _others_hand_back(self) -> bool:
        return await self.run.claims.others_will_hand_back()

    async def _why_stop(self) -> RunEnd | None:
        if self.run.stop.is_requested:
            return RunEnd.DEADLINE if self.run.stop.reason == "deadline" else RunEnd.SIGNAL
        if self.options.max_tasks is not None and self.started >= self.options.max_tasks:
            return RunEnd.MAX_TASKS
        fleet_spend = await self.run.claims.spent()
        if fleet_spend is not None:  # max_cost_usd counts across the fleet
            self.ledger.spent = fleet_spend
        return self.ledger.enough()

    async def _start(
        self, group: TaskGroup, send: MemoryObjectSendStream[Finished], backlog: Backlog
    ) -> int:
        """Start as many tasks as free workers, --max-tasks and the claims allow."""
        room = len(self.free)
        if self.options.max_tasks is not None:
            room = min(room, self.options.max_tasks - self.started)
        if room <= 0:
            return 0
        running = [held.task for held in self.running.values()]
        picked = await self.run.claims.pick(backlog, running, room)
        for task in picked:
            worker = self.free.pop()
            self.running[task.id] = Finished(worker, task, None)
            self.started += 1
            group.start_soon(self._turn, worker, task, send.clone())
        if picked:
            self._status()
        return len(picked)

    async def _turn(
        self, worker: Worker, task: Task, send: MemoryObjectSendStream[Finished]
    ) -> None:
        async with send:
            try:
                outcome = await run_task(worker, self.queue, self.pause, task)
            except RalphError as exc:
                await send.send(Finished(worker, task, None, exc))
                return
            await send.send(Finished(worker, task, outcome))

    async def _next_finished(self, receive: MemoryObjectReceiveStream[Finished]) -> list[Finished]:
        """Wait for a worker to finish, a spec to change, poll_interval, or a stop."""
        finished: list[Finished] = []
        waits_for_work = bool(self.free) and not self.run.stop.is_requested
        if not waits_for_work and not self.running:
            return finished  # stopping, and no worker to wait for
        timeout = self.run.settings.poll_interval if waits_for_work else None
        if timeout is not None and self.others_busy:
            # A batch run waiting for other processes' tasks: see soon whether they landed.
            timeout = min(timeout, OTHERS_POLL)
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:

                async def one_finished() -> None:
                    finished.append(await receive.receive())
                    group.cancel_scope.cancel()

                async def woken() -> None:
                    await self.wakeup.wait()
                    group.cancel_scope.cancel()

                async def stopped() -> None:
                    await self.run.stop.requested.wait()
                    group.cancel_scope.cancel()

                if self.running:
                    group.start_soon(one_finished)
                if waits_for_work:
                    group.start_soon(woken)
                    group.start_soon(stopped)
        while True:  # everything else that finished meanwhile
            try:
                finished.append(receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                return finished

    async def _account(self, done: Finished) -> RalphError | None:
        """A worker is free again; its task is counted (the breaker may trip)."""
        self.running.pop(done.task.id, None)
        self.free.append(done.worker)
        self._status()
        await self.run.claims.ended(done.task, done.outcome)
        if done.error is not None:
            return done.error
        assert done.outcome is not None
        try:
            self.ledger.record(done.outcome)
        except BreakerTripped as exc:
            return exc
        return None

    def _status(self) -> None:
        if not self.running or self.run.settings.workers == 1:
            return  # one worker: its attempt says what it does
        held = ", ".join(f"{f.worker.name}: {task}" for task, f in sorted(self.running.items()))
        self.run.notify.status(f"working: {held}")

    def _report_invalid(self, backlog: Backlog) -> None:
        """Report each bad spec once per run; the loop skips it and goes on."""
        for task in backlog:
            if task.state is State.INVALID and task.reason not in self.reported:
                self.reported.add(task.reason)
                self.run.events.emit(
                    "spec_invalid", task=task.id, path=task.path, reason=task.reason
                )
                log.warning("ralph.spec_invalid", path=task.path, reason=task.reason)


def _finished(the_run: Run, ledger: Ledger, end: RunEnd, code: int | None) -> None:
    the_run.events.emit(
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


async def watch_specs(folders: list[Path], wakeup: Wakeup, unwatch: anyio.Event) -> None:
    """Until ``unwatch`` is set: set ``wakeup`` at every change under ``folders`` (inotify):
    the specs, and the folder ``ralph retry`` touches to wake the daemon.

    The watcher gets an event of its own: awatch sets the event it is given when it ends,
    and ralph's stop event must only ever mean that someone asked ralph to stop.
    """
    try:
        # No filter: the default one ignores anything under a .git folder (the wake folder).
        changes = awatch(*folders, stop_event=unwatch, debounce=100, step=100, watch_filter=None)
        async for _changes in changes:
            wakeup.set()
    except (OSError, RuntimeError) as exc:  # gone, or no watcher here: poll_interval rules
        log.debug("ralph.spec_watch_unavailable", error=str(exc))
