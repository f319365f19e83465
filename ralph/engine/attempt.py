"""One attempt: a fresh agent on one task, judged by the gate, committed or rolled back.

``_run_attempt`` is the contract's eight steps, in order. Learnings are kept either way.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from anyio import to_thread

from ralph.agents import AgentReport, AgentRun, agent_environment
from ralph.backlog.specs import Spec
from ralph.backlog.state import AttemptIntent
from ralph.engine import guard
from ralph.engine.gate import Verdict, check_verdict, judge_changes
from ralph.engine.gate import run_checks as run_check_commands
from ralph.engine.prompt import PromptContext, build_prompt, failure_summary
from ralph.engine.worker import Worker
from ralph.memory import file as memory
from ralph.memory.learnings import record as record_learnings
from ralph.outcome import TRANSIENT, Reason
from ralph.runtime.processes import ProcessResult, run_in_group
from ralph.vcs import repo
from ralph.vcs.receipts import Receipt

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class Attempt:
    """One attempt of one task: where it starts and where its files are."""

    spec: Spec
    number: int
    start: str
    """The commit the attempt starts from; a failed attempt goes back to it."""
    dir: Path
    intent: AttemptIntent

    @property
    def prompt_file(self) -> Path:
        return self.dir / "prompt.md"

    @property
    def learnings_file(self) -> Path:
        return self.dir / "learnings.md"


@dataclass(frozen=True)
class AgentRan:
    """How the agent's run ended and what its output says."""

    process: ProcessResult
    report: AgentReport


@dataclass(frozen=True)
class Checked:
    """The gate's decision (None: every check passed) and the time the checks took."""

    verdict: Verdict | None
    seconds: float = 0.0


@dataclass(frozen=True)
class AttemptOutcome:
    """How an attempt ended."""

    reason: Reason
    verdict: Verdict | None = None
    commit: str | None = None
    report: AgentReport = AgentReport()


async def run_attempt(worker: Worker, spec: Spec, number: int) -> AttemptOutcome:
    """Run attempt number ``number`` of ``spec`` from the current HEAD."""
    with worker.spans.span("ralph.attempt", task=spec.id, attempt=number) as annotate:
        outcome = await _run_attempt(worker, spec, number)
        annotate(status=outcome.reason.value, commit=outcome.commit)
        return outcome


async def _run_attempt(worker: Worker, spec: Spec, number: int) -> AttemptOutcome:
    attempt = await record_start(worker, spec, number)  # 1. start commit, folder, baseline
    await write_prompt(worker, attempt)  # 2. the task, memory, last failure, rules
    ran = await run_agent(worker, attempt)  # 3. in its own process group, bounded
    await bring_head_back(worker, attempt)  # 4. the runner, not the agent, commits
    verdict = await judge_change(worker, attempt, ran)  # 5. the agent's exit, .git, paths
    checked = await run_checks(worker, attempt) if verdict is None else Checked(verdict)  # 6.
    receipt = await record_usage(worker, attempt, ran, checked)
    if checked.verdict is None:
        outcome = await commit(worker, attempt, receipt)  # 7. one commit with trailers
    else:
        outcome = await roll_back(worker, attempt, checked.verdict)  # 8. diff kept, tree reset
    await to_thread.run_sync(worker.state.end_attempt)
    return dataclasses.replace(outcome, report=ran.report)


async def record_start(worker: Worker, spec: Spec, number: int) -> Attempt:
    """Step 1: the start commit, the attempt's folder, the baseline and the durable intent."""
    worker.notify.status(f"task {spec.id} attempt {number}")
    start = await to_thread.run_sync(repo.head_commit, worker.root)
    attempt_dir = _attempt_dir(worker, spec.id, number)
    await to_thread.run_sync(guard.save_baseline, worker, attempt_dir)
    intent = AttemptIntent(spec.id, number, start, worker.branch, str(attempt_dir))
    await to_thread.run_sync(worker.state.begin_attempt, intent)
    worker.events.emit("attempt_started", task=spec.id, attempt=number, start_commit=start)
    log.info("ralph.attempt_started", start_commit=start[:12], dir=str(attempt_dir))
    return Attempt(spec, number, start, attempt_dir, intent)


async def write_prompt(worker: Worker, attempt: Attempt) -> None:
    """Step 2: the prompt file, and an empty file for the agent's learnings."""

    def write() -> None:
        attempt.prompt_file.write_text(build_prompt(_prompt_context(worker, attempt)), "utf-8")
        attempt.learnings_file.touch()

    await to_thread.run_sync(write)


async def run_agent(worker: Worker, attempt: Attempt) -> AgentRan:
    """Step 3: the agent at the root of the tree, in its own group, within the timeout."""
    spec = attempt.spec
    command = worker.agent.command(attempt.prompt_file)
    env = agent_environment(worker.env, command)
    env.update(
        RALPH_TASK_ID=spec.id,
        RALPH_ATTEMPT=str(attempt.number),
        RALPH_PROMPT_FILE=str(attempt.prompt_file),
        RALPH_LEARNINGS_FILE=str(attempt.learnings_file),
    )
    log_path = attempt.dir / "agent.log"

    def started(pgid: int) -> None:
        worker.state.begin_attempt(dataclasses.replace(attempt.intent, pgid=pgid))

    model = worker.agent.model()
    with worker.spans.span("ralph.agent", agent=worker.agent.name, model=model) as annotate:
        result = await run_in_group(
            command.argv,
            cwd=worker.root,
            env=env,
            stdin=command.stdin,
            log_path=log_path,
            timeout=spec.timeout or worker.settings.attempt_timeout,
            grace=worker.settings.kill_grace,
            stop=worker.stop,
            on_start=started,
        )
        run = AgentRun(result.outcome, result.exit_code, log_path, result.tail)
        report = await to_thread.run_sync(worker.agent.report, run, datetime.now(UTC))
        annotate(
            outcome=result.outcome,
            exit_code=result.exit_code,
            duration_s=round(result.duration, 3),
            **report.as_event(),
        )
    _agent_exited(worker, attempt, result, report)
    return AgentRan(result, report)


def _agent_exited(
    worker: Worker, attempt: Attempt, result: ProcessResult, report: AgentReport
) -> None:
    worker.events.emit(
        "agent_exited",
        task=attempt.spec.id,
        attempt=attempt.number,
        agent=worker.agent.name,
        model=worker.agent.model(),
        outcome=result.outcome,
        exit_code=result.exit_code,
        duration_s=round(result.duration, 3),
        output_bytes=result.output_bytes,
        **report.as_event(),
    )
    log.info(
        "ralph.agent_exited",
        outcome=result.outcome,
        exit_code=result.exit_code,
        duration_s=round(result.duration, 1),
        cost_usd=report.cost_usd,
        failure_class=report.failure.value if report.failure else None,
    )


async def bring_head_back(worker: Worker, attempt: Attempt) -> None:
    """Step 4: if the agent moved HEAD, back to the start commit with its changes kept."""
    await to_thread.run_sync(guard.fold_head, worker, attempt.spec.id, attempt.start)


async def judge_change(worker: Worker, attempt: Attempt, ran: AgentRan) -> Verdict | None:
    """Step 5: the agent's exit, what it did behind git's back, and the change's paths."""
    behind_git = await to_thread.run_sync(guard.undo_behind_git, worker, attempt.start, attempt.dir)
    specs = worker.settings.specs_dir.as_posix()
    changes = await to_thread.run_sync(repo.stage_changes, worker.root, attempt.start, specs)
    if ran.process.outcome == "stopped":  # a stop is nobody's fault: the attempt must not count
        return Verdict(Reason.INTERRUPTED, "ralph was asked to stop while the agent ran.")
    return (
        behind_git
        or _agent_verdict(ran)
        or judge_changes(
            changes,
            protected=worker.settings.protected_globs(),
            append_only=worker.settings.append_only,
            allow_empty=attempt.spec.allow_empty,
        )
    )


def _agent_verdict(ran: AgentRan) -> Verdict | None:
    process, report = ran.process, ran.report
    last_line = _last_line(process.tail)
    if process.outcome == "timeout":
        what = "The agent ran past the attempt timeout."
        return Verdict(Reason.TIMEOUT, failure_summary(what, process.tail), detail=last_line)
    if report.failure in (Reason.AUTH, *TRANSIENT):
        assert report.failure is not None
        what = f"The agent's model API failed ({report.failure.value}): {report.detail}"
        summary = failure_summary(what, process.tail)
        return Verdict(report.failure, summary, retry_at=report.retry_at, detail=last_line)
    if process.exit_code != 0:
        what = f"The agent exited with code {process.exit_code}."
        return Verdict(Reason.CRASH, failure_summary(what, process.tail), detail=last_line)
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


async def run_checks(worker: Worker, attempt: Attempt) -> Checked:
    """Step 6: every check, in order, each within check_timeout; the first failure decides."""
    settings = worker.settings
    results = await run_check_commands(
        [*settings.checks, *attempt.spec.checks],
        root=worker.root,
        env=worker.env,
        log_dir=attempt.dir,
        timeout=settings.check_timeout,
        grace=settings.kill_grace,
        stop=worker.stop,
        spans=worker.spans,
    )
    for result in results:
        worker.events.emit(
            "check_finished",
            task=attempt.spec.id,
            attempt=attempt.number,
            command=result.command,
            outcome=result.outcome,
            exit_code=result.exit_code,
            passed=result.ok,
            duration_s=round(result.duration, 3),
        )
    seconds = sum(result.duration for result in results)
    if any(result.outcome == "stopped" for result in results):
        stopped = f"ralph was asked to stop ({worker.stop.reason})."
        return Checked(Verdict(Reason.INTERRUPTED, stopped), seconds)
    return Checked(check_verdict(results), seconds)


async def record_usage(
    worker: Worker, attempt: Attempt, ran: AgentRan, checked: Checked
) -> Receipt:
    """Add this attempt's time, tokens and cost to the task's totals: the commit's receipt."""
    spec, report = attempt.spec, ran.report
    totals = await to_thread.run_sync(
        lambda: worker.state.add_usage(
            spec.id,
            spec.digest,
            agent_seconds=ran.process.duration,
            check_seconds=checked.seconds,
            input_tokens=report.input_tokens,
            output_tokens=report.output_tokens,
            cost_usd=report.cost_usd,
        )
    )
    return Receipt(
        task=spec.id,
        attempts=attempt.number,
        agent=worker.agent.name,
        model=worker.agent.model(),
        agent_seconds=totals.get("agent_seconds", 0.0),
        check_seconds=totals.get("check_seconds", 0.0),
        input_tokens=totals.get("input_tokens"),
        output_tokens=totals.get("output_tokens"),
        cost_usd=totals.get("cost_usd"),
    )


async def commit(worker: Worker, attempt: Attempt, receipt: Receipt) -> AttemptOutcome:
    """Step 7: one commit with the task's title and its trailers, learnings included.

    Never twice: a task something else committed meanwhile is not committed again. A
    commit git refuses (a hook, with run_hooks) is the gate saying no: rolled back.
    """
    spec = attempt.spec
    learnings = _read_learnings(worker, attempt)
    await to_thread.run_sync(
        lambda: worker.state.begin_attempt(dataclasses.replace(attempt.intent, phase="committing"))
    )
    if spec.id in await to_thread.run_sync(worker.done.read, worker.root):
        await to_thread.run_sync(guard.reset_tree, worker, attempt.start)
        await commit_learnings_only(worker, spec.id, attempt.number, learnings)
        return AttemptOutcome(Reason.ALREADY_DONE)
    added = await to_thread.run_sync(_add_learnings, worker, spec.id, learnings)
    if added:
        await to_thread.run_sync(
            repo.stage_paths, worker.root, [worker.settings.memory_file.as_posix()]
        )
    message = repo.task_message(spec.title, receipt.trailers())
    try:
        with worker.spans.span("ralph.commit", task=spec.id, attempt=attempt.number) as annotate:
            sha = await to_thread.run_sync(
                lambda: repo.commit(worker.root, message, run_hooks=worker.settings.run_hooks)
            )
            annotate(commit=sha, **receipt.trailers())
    except repo.CommitRejected as exc:
        refused = Verdict(Reason.COMMIT_REJECTED, failure_summary(str(exc), exc.output))
        return await roll_back(worker, attempt, refused)
    # The checks may have left files behind; the next task starts from exactly the commit.
    await to_thread.run_sync(guard.reset_tree, worker, sha)
    worker.events.emit(
        "committed", task=spec.id, attempt=attempt.number, commit=sha, learnings=len(added)
    )
    _learnings_committed(worker, spec.id, added)
    return AttemptOutcome(Reason.COMMITTED, commit=sha)


async def roll_back(worker: Worker, attempt: Attempt, verdict: Verdict) -> AttemptOutcome:
    """Step 8: keep the diff for forensics, put the tree back at the start, keep learnings."""
    spec = attempt.spec
    diff = attempt.dir / "changes.diff"
    await to_thread.run_sync(repo.save_diff, worker.root, attempt.start, diff)
    await to_thread.run_sync(guard.reset_tree, worker, attempt.start)
    worker.events.emit(
        "rolled_back",
        task=spec.id,
        attempt=attempt.number,
        reason=verdict.reason.value,
        summary=verdict.summary[:2000],
        diff=str(diff),
    )
    log.warning("ralph.attempt_failed", reason=verdict.reason.value, diff=str(diff))
    learnings = _read_learnings(worker, attempt)
    await commit_learnings_only(worker, spec.id, attempt.number, learnings)
    return AttemptOutcome(verdict.reason, verdict)


async def commit_learnings_only(
    worker: Worker, task_id: str, attempt: int, learnings: list[str], subject: str = ""
) -> None:
    """Keep what a failed attempt learned, in a commit that changes only the memory file."""
    added = await to_thread.run_sync(_add_learnings, worker, task_id, learnings)
    if not added:
        return
    memory_path = worker.settings.memory_file.as_posix()
    message = repo.task_message(
        subject or f"Learnings from attempt {attempt} of {task_id}",
        {repo.LEARNINGS_TRAILER: task_id},
    )

    def commit_memory_file() -> None:
        repo.stage_paths(worker.root, [memory_path])
        repo.commit(worker.root, message, run_hooks=worker.settings.run_hooks)

    try:
        await to_thread.run_sync(commit_memory_file)
    except repo.CommitRejected as exc:
        # The learnings stay in the attempt's learnings.md; the tree must stay clean.
        await to_thread.run_sync(repo.restore_paths, worker.root, "HEAD", [memory_path])
        log.error("ralph.learnings_not_committed", reason=str(exc), output=exc.output[-500:])
        return
    _learnings_committed(worker, task_id, added)


def _read_learnings(worker: Worker, attempt: Attempt) -> list[str]:
    return memory.read_learnings_file(
        attempt.learnings_file, limit=worker.settings.max_learnings_per_attempt
    )


def _add_learnings(worker: Worker, task_id: str, learnings: list[str]) -> list[memory.Learning]:
    """Add learnings to the memory file (uncommitted; returns what changed), or with
    ``learnings = "review"`` to the pending file (returns nothing to commit)."""
    if not learnings:
        return []
    day = datetime.now(UTC).date().isoformat()
    return record_learnings(worker.root, worker.settings, learnings, task_id, day)


def _learnings_committed(worker: Worker, task_id: str, added: list[memory.Learning]) -> None:
    for learning in added:
        worker.events.emit("learning_added", task=task_id, text=learning.text)


def _prompt_context(worker: Worker, attempt: Attempt) -> PromptContext:
    settings, spec = worker.settings, attempt.spec
    return PromptContext(
        spec=spec,
        attempt=attempt.number,
        max_attempts=worker.max_attempts(spec),
        memory=memory.memory_for_prompt(
            worker.root / settings.memory_file,
            settings.memory_budget,
            spec_text=f"{spec.title}\n{spec.body}",
        ),
        memory_file=settings.memory_file.as_posix(),
        last_failure=worker.state.last_failure(spec.id, spec.digest),
        protected=settings.protected_globs(),
        append_only=settings.append_only,
        checks=[*settings.checks, *spec.checks],
    )


def _attempt_dir(worker: Worker, task_id: str, attempt: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", task_id)
    path = worker.ralph_dir / "attempts" / slug / f"{attempt}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path
