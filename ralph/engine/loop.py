"""The loop: pick the next task, run attempts until one passes the gate or none are left,
then the next task; when the backlog is empty, wait for new specs (or stop, with --once).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal

import anyio
import structlog
from anyio import to_thread
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
)
from watchfiles import awatch

from ralph.agents.failures import TRANSIENT, FailureClass
from ralph.backlog.specs import Spec, load_specs
from ralph.backlog.tasks import State, Task, next_task, plan
from ralph.engine.attempt import (
    AttemptResult,
    Worker,
    commit_learnings_only,
    max_attempts,
    run_attempt,
)
from ralph.engine.recovery import recover_interrupted_attempt
from ralph.errors import RalphError, RepositoryError, UsageError
from ralph.memory.learnings import failure_lesson
from ralph.vcs import repo

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class RunOptions:
    once: bool = False
    max_tasks: int | None = None


class RunEnd(StrEnum):
    """Why the loop ended: logged in ``run_finished``, so a daemon never stops unexplained."""

    SIGNAL = "signal"
    DEADLINE = "deadline"
    MAX_TASKS = "max_tasks"
    COST_CAP = "cost_cap"
    BREAKER = "breaker"
    BACKLOG_DONE = "backlog_done"
    AUTH = "auth"
    LIMIT_TOO_FAR = "limit_too_far"
    ERROR = "error"


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
    code = 0 if end in (RunEnd.SIGNAL, RunEnd.DEADLINE) else exit_code(await scan(worker))
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
        tasks = await scan(worker)
        _report_invalid(worker, tasks, reported)
        task = next_task(tasks)
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


async def _tree_is_clean(worker: Worker, options: RunOptions) -> bool:
    foreign = await foreign_changes(worker)
    if foreign and options.once:
        raise RepositoryError(foreign)
    if foreign:
        log.warning("ralph.waiting_for_clean_tree", detail=foreign)
    return not foreign


@dataclass(frozen=True)
class TaskOutcome:
    """How a task's turn in the loop ended."""

    status: Literal["done", "failed", "interrupted"]
    failure_class: str = ""
    cost_usd: float = 0.0


class BreakerTripped(RalphError):
    """Too many tasks in a row failed the same way: stop instead of burning the backlog."""


class AgentAuthFailed(UsageError):
    """The agent CLI has no usable credentials: nothing will work until a person fixes it."""


class LimitTooFar(RalphError):
    """A usage limit resets later than ralph is willing to wait."""


class Ledger:
    """Run-wide tallies: tasks attempted, money spent, and the breaker's streak."""

    def __init__(self, worker: Worker, options: RunOptions) -> None:
        self.worker = worker
        self.options = options
        self.attempted = 0
        self.spent = 0.0
        self.streak: tuple[str, int] = ("", 0)

    def enough(self) -> RunEnd | None:
        """Why --max-tasks or max_cost_usd says to take no new task, or None."""
        if self.options.max_tasks is not None and self.attempted >= self.options.max_tasks:
            return RunEnd.MAX_TASKS
        cap = self.worker.settings.max_cost_usd
        if cap is not None and self.spent >= cap:
            log.warning("ralph.cost_cap_reached", spent_usd=round(self.spent, 4), cap_usd=cap)
            self.worker.events.emit("cost_cap_reached", spent_usd=self.spent, cap_usd=cap)
            return RunEnd.COST_CAP
        return None

    def record(self, outcome: TaskOutcome) -> None:
        """Count the task; trip the breaker on a streak of the same failure."""
        self.attempted += 1
        self.spent += outcome.cost_usd
        if outcome.status != "failed":
            self.streak = ("", 0) if outcome.status == "done" else self.streak
            return
        last, count = self.streak
        count = count + 1 if outcome.failure_class == last else 1
        self.streak = (outcome.failure_class, count)
        threshold = self.worker.settings.breaker_threshold
        if count >= threshold:
            self.worker.events.emit(
                "breaker_tripped", failure_class=outcome.failure_class, tasks=count
            )
            raise BreakerTripped(
                f"{count} tasks in a row failed with {outcome.failure_class}; stopping "
                f"(breaker_threshold = {threshold}). Look at the last attempts under .ralph/"
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


async def run_task(worker: Worker, task: Task) -> TaskOutcome:
    """Attempts with a fresh agent each until one is committed or the attempts run out."""
    with worker.spans.span("ralph.task", task=task.id, title=task.title) as annotate:
        outcome = await _run_task(worker, task)
        annotate(
            status=outcome.status,
            failure_class=outcome.failure_class or None,
            cost_usd=outcome.cost_usd or None,
        )
        return outcome


async def _run_task(worker: Worker, task: Task) -> TaskOutcome:
    spec = task.spec
    assert spec is not None
    limit = max_attempts(worker, spec)
    spent = 0.0
    with structlog.contextvars.bound_contextvars(task=spec.id):
        worker.events.emit(
            "task_started", task=spec.id, title=spec.title, attempts_so_far=task.attempts
        )
        log.info("ralph.task_started", title=spec.title)
        check_failures: Counter[str] = Counter()
        # A task killed in its last attempt comes back with no attempts left: it failed.
        last_class = task.failure_class or "interrupted"
        for attempt in range(task.attempts + 1, limit + 1):
            with structlog.contextvars.bound_contextvars(attempt=attempt):
                result, cost = await attempt_through_limits(worker, spec, attempt)
            if result.reason == "check_failed":
                check_failures[_failed_check(result.summary)] += 1
            spent += cost
            waited_out = result.reason in TRANSIENT and worker.stop.is_requested
            if result.status == "interrupted" or waited_out:
                return TaskOutcome("interrupted", cost_usd=spent)
            if result.reason == FailureClass.AUTH:
                raise AgentAuthFailed(
                    f"the {worker.agent.name} agent could not authenticate "
                    f"({result.report.detail or 'see its output'}); fix its credentials, "
                    f"then run ralph again. Output: {_attempt_log(result)}"
                )
            worker.state.record_attempt(
                spec.id, spec.digest, attempt, result.summary, result.reason
            )
            last_class = result.reason
            if result.status in ("committed", "already_done"):
                commit = result.commit or ""
                worker.events.emit("task_done", task=spec.id, attempts=attempt, commit=commit)
                log.info("ralph.task_committed", attempts=attempt, commit=commit[:12])
                return TaskOutcome("done", cost_usd=spent)
            if worker.stop.is_requested:  # recorded above; the next attempt waits for a new run
                return TaskOutcome("interrupted", cost_usd=spent)
        last = _last_reason(worker, spec.id, spec.digest)
        reason = f"failed {limit} attempt(s); last: {last}"
        worker.state.mark_failed(spec.id, spec.digest, reason)
        worker.events.emit(
            "task_failed", task=spec.id, attempts=limit, reason=reason, failure_class=last_class
        )
        log.error("ralph.task_failed", attempts=limit, reason=reason, failure_class=last_class)
        await _record_failure_lesson(worker, spec, limit, check_failures)
        return TaskOutcome("failed", last_class, spent)


async def _record_failure_lesson(
    worker: Worker, spec: Spec, attempts: int, check_failures: Counter[str]
) -> None:
    """The lesson of the failure itself, for the next agent working in that area."""
    top = check_failures.most_common(1)
    command, failures = top[0] if top else (None, 0)
    lesson = failure_lesson(spec.id, command, failures, attempts)
    if lesson is None:
        return
    await commit_learnings_only(
        worker, spec.id, attempts, [lesson], subject=f"Record why task {spec.id} failed"
    )


def _failed_check(summary: str) -> str:
    match = re.match(r"Check `(.+?)`", summary)
    return match.group(1) if match else "?"


def _attempt_log(result: AttemptResult) -> str:
    return result.summary.splitlines()[-1][:200] if result.summary else ""


async def attempt_through_limits(
    worker: Worker, spec: Spec, attempt: int
) -> tuple[AttemptResult, float]:
    """One attempt, run again (same number) while the model API is rate limited or down.

    Limits and outages are nobody's fault, so they don't use up the task's attempts:
    ralph waits until the limit resets (when the CLI says) or backs off, bounded by
    retry_max_wait, and a stop request ends the wait at once.
    """
    settings = worker.settings
    spent = 0.0
    result = AttemptResult("interrupted")
    retrying = AsyncRetrying(
        retry=retry_if_result(lambda r: r.reason in TRANSIENT and not worker.stop.is_requested),
        stop=stop_after_attempt(RETRY_TRIES) | stop_after_delay(settings.retry_max_wait),
        wait=lambda state: _wait_seconds(worker, state),
        before_sleep=lambda state: _announce_wait(worker, state),
        sleep=lambda seconds: _sleep_unless_stopped(worker, seconds),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    async for trying in retrying:
        if trying.retry_state.attempt_number > 1 and worker.stop.is_requested:
            break  # the wait was cut short by a stop: start no new agent
        with trying:
            result = await run_attempt(worker, spec, attempt)
            spent += result.report.cost_usd or 0.0
        if trying.retry_state.outcome is not None and not trying.retry_state.outcome.failed:
            trying.retry_state.set_result(result)
    return result, spent


RETRY_TRIES = 12


def _wait_seconds(worker: Worker, state: RetryCallState) -> float:
    """Until the limit resets when that is known, else backing off from retry_backoff."""
    settings = worker.settings
    result: AttemptResult = state.outcome.result() if state.outcome else AttemptResult("failed")
    now = datetime.now(UTC)
    if result.retry_at is not None:
        seconds = (result.retry_at - now).total_seconds() + RESET_MARGIN
        if seconds > settings.retry_max_wait:
            raise LimitTooFar(
                f"the {worker.agent.name} agent's usage limit resets at "
                f"{result.retry_at.isoformat(timespec='minutes')}, later than retry_max_wait "
                f"allows; stopping. Run ralph again after the reset."
            )
    else:
        seconds = settings.retry_backoff * 2 ** (state.attempt_number - 1)
    return float(max(0.0, min(seconds, MAX_SINGLE_WAIT, settings.retry_max_wait)))


def _announce_wait(worker: Worker, state: RetryCallState) -> None:
    """Say what ralph waits for and until when; only called when it really waits."""
    result: AttemptResult = state.outcome.result() if state.outcome else AttemptResult("failed")
    seconds = state.upcoming_sleep
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    worker.events.emit(
        "waiting", reason=result.reason, seconds=round(seconds, 1), until=until.isoformat()
    )
    log.warning("ralph.waiting", reason=result.reason, until=until.isoformat(timespec="seconds"))
    worker.notify.status(f"waiting for {result.reason} until {until.isoformat(timespec='seconds')}")


RESET_MARGIN = 5.0
MAX_SINGLE_WAIT = 3600.0


async def _sleep_unless_stopped(worker: Worker, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        await worker.stop.requested.wait()


def _last_reason(worker: Worker, task_id: str, digest: str) -> str:
    summary = worker.state.last_failure(task_id, digest)
    return summary.splitlines()[0] if summary else "unknown"


async def scan(worker: Worker) -> list[Task]:
    """Every task's state, from the specs, git history and ``.ralph/state.json``."""
    settings = worker.settings

    def read() -> list[Task]:
        spec_set = load_specs(worker.root / settings.specs_dir, f"{settings.specs_dir.as_posix()}/")
        done = worker.done.read(worker.root)
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


def exit_code(tasks: list[Task]) -> int:
    """0 when nothing failed, is blocked or invalid; 1 otherwise."""
    bad = {State.FAILED, State.BLOCKED, State.INVALID}
    return 1 if any(task.state in bad for task in tasks) else 0
