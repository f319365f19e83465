"""One task's turn: attempts with a fresh agent each, until one passes or none are left."""

from __future__ import annotations

from collections import Counter

import structlog
from anyio import to_thread

from ralph.backlog.specs import Spec
from ralph.backlog.tasks import Task
from ralph.engine.attempt import AttemptOutcome, commit_learnings_only
from ralph.engine.landing import MergeQueue
from ralph.engine.ledger import TaskOutcome
from ralph.engine.limits import Pause, attempt_through_limits
from ralph.engine.worker import Worker
from ralph.errors import UsageError
from ralph.memory.learnings import failure_lesson
from ralph.outcome import TRANSIENT, Reason

log = structlog.get_logger("ralph")

MAX_CONFLICTS = 3


class AgentAuthFailed(UsageError):
    """The agent CLI has no usable credentials: nothing will work until a person fixes it."""


async def run_task(worker: Worker, queue: MergeQueue, pause: Pause, task: Task) -> TaskOutcome:
    """Attempts with a fresh agent each until one is committed or the attempts run out."""
    run = worker.run
    with run.spans.span("ralph.task", task=task.id, title=task.title) as annotate:
        outcome = await _run_task(worker, queue, pause, task)
        annotate(
            status=outcome.status,
            failure_class=outcome.last_reason.value if outcome.last_reason else None,
            cost_usd=outcome.cost_usd or None,
        )
        return outcome


async def _run_task(worker: Worker, queue: MergeQueue, pause: Pause, task: Task) -> TaskOutcome:
    run, spec = worker.run, task.spec
    assert spec is not None
    limit = run.max_attempts(spec)
    spent = 0.0
    with structlog.contextvars.bound_contextvars(task=spec.id, worker=worker.number):
        run.events.emit(
            "task_started",
            task=spec.id,
            title=spec.title,
            attempts_so_far=task.attempts,
            worker=worker.number,
        )
        log.info("ralph.task_started", title=spec.title)
        failed_checks: Counter[str] = Counter()
        # A task killed in its last attempt comes back with no attempts left: it failed.
        last = task.last_reason or Reason.INTERRUPTED
        number, conflicts = await run.claims.attempts_used(task) + 1, 0
        while number <= limit:
            with structlog.contextvars.bound_contextvars(attempt=number):
                outcome, cost = await attempt_through_limits(
                    worker, queue, pause, spec, number, alone=conflicts > 0
                )
            spent += cost
            if outcome.verdict is not None and outcome.verdict.check is not None:
                failed_checks[outcome.verdict.check.command] += 1
            if _interrupted(worker, outcome):
                return TaskOutcome("interrupted", cost_usd=spent)
            if outcome.reason is Reason.AUTH:
                raise AgentAuthFailed(_auth_message(worker, outcome))
            last = outcome.reason
            if outcome.reason is Reason.CONFLICT:  # nobody's fault: the attempt isn't used
                conflicts += 1
                if run.stop.is_requested:
                    return TaskOutcome("interrupted", cost_usd=spent)
                if conflicts < MAX_CONFLICTS:
                    continue
                await to_thread.run_sync(_record_attempt, worker, spec, number, outcome)
                break
            conflicts = 0
            await _count(worker, task, number, outcome, cost)
            if outcome.reason.passed:
                return TaskOutcome("done", cost_usd=spent)
            if run.stop.is_requested:  # recorded above; the next attempt waits for a new run
                return TaskOutcome("interrupted", cost_usd=spent)
            number += 1
        reason = await _task_failed(worker, queue, spec, (min(number, limit), last), failed_checks)
        await run.claims.failed(task, reason)
        return TaskOutcome("failed", last, spent)


async def _count(
    worker: Worker, task: Task, number: int, outcome: AttemptOutcome, cost: float
) -> None:
    """The attempt was used: remember it (and, when it passed, the commit that did it)."""
    run, spec = worker.run, task.spec
    assert spec is not None
    await to_thread.run_sync(_record_attempt, worker, spec, number, outcome)
    await run.claims.counted(task, cost)
    if not outcome.reason.passed:
        return
    commit = outcome.commit or ""
    if commit:
        await to_thread.run_sync(run.state.record_done, spec.id, spec.digest, commit)
    run.events.emit("task_done", task=spec.id, attempts=number, commit=commit, worker=worker.number)
    log.info("ralph.task_committed", attempts=number, commit=commit[:12])


def _interrupted(worker: Worker, outcome: AttemptOutcome) -> bool:
    """A stop ended the attempt, or cut short the wait for a limit or an outage."""
    waited_out = outcome.reason in TRANSIENT and worker.run.stop.is_requested
    return outcome.reason is Reason.INTERRUPTED or waited_out


def _auth_message(worker: Worker, outcome: AttemptOutcome) -> str:
    detail = outcome.report.detail or "see its output"
    last_line = outcome.verdict.detail if outcome.verdict else ""
    said = f" Its last words: {last_line}" if last_line else ""
    return (
        f"the {worker.run.agent.name} agent could not authenticate ({detail}); fix its "
        f"credentials, then run ralph again.{said}"
    )


def _record_attempt(worker: Worker, spec: Spec, number: int, outcome: AttemptOutcome) -> None:
    summary = outcome.verdict.summary if outcome.verdict else ""
    failed = None if outcome.reason.passed else outcome.reason
    worker.run.state.record_attempt(spec.id, spec.digest, number, summary, failed)


async def _task_failed(
    worker: Worker,
    queue: MergeQueue,
    spec: Spec,
    ended: tuple[int, Reason],
    failed_checks: Counter[str],
) -> str:
    """Mark the task failed, say so once, and keep the lesson of the failure when it has one;
    return the reason shown for it."""
    run = worker.run
    attempts, last = ended
    summary = await to_thread.run_sync(run.state.last_failure, spec.id, spec.digest)
    headline = summary.splitlines()[0] if summary else "unknown"
    reason = f"failed {attempts} attempt(s); last: {headline}"
    await to_thread.run_sync(run.state.mark_failed, spec.id, spec.digest, reason)
    run.events.emit(
        "task_failed",
        task=spec.id,
        attempts=attempts,
        reason=reason,
        failure_class=last.value,
        worker=worker.number,
    )
    log.error("ralph.task_failed", attempts=attempts, reason=reason, failure_class=last.value)
    top = failed_checks.most_common(1)
    command, failures = top[0] if top else (None, 0)
    lesson = failure_lesson(spec.id, command, failures, attempts)
    if lesson is not None:
        await commit_learnings_only(
            worker,
            queue,
            spec.id,
            attempts,
            (lesson,),
            subject=f"Record why task {spec.id} failed",
        )
    return reason
