"""One attempt: a fresh agent on one task, judged by the gate, committed or rolled back.

The contract's eight steps, in order: record the start, write the prompt, run the agent
in its own group, fold HEAD back, judge the change, run the checks, then commit with
trailers or keep the diff and restore the tree. Learnings are kept either way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from anyio import to_thread

from ralph.agents import Agent, AgentReport, AgentRun, agent_environment
from ralph.agents.failures import TRANSIENT, FailureClass
from ralph.backlog.specs import Spec
from ralph.backlog.state import AttemptIntent, StateStore
from ralph.engine.gate import Verdict, check_verdict, judge_changes, run_checks
from ralph.engine.prompt import PromptContext, build_prompt, failure_summary
from ralph.memory import file as memory
from ralph.memory.learnings import record as record_learnings
from ralph.observe.telemetry import EventLog
from ralph.observe.tracing import NoSpans, Spans
from ralph.runtime.atomic import write_atomic
from ralph.runtime.processes import ProcessResult, Stop, run_in_group
from ralph.runtime.service import Notifier
from ralph.settings import Settings
from ralph.vcs import repo
from ralph.vcs.receipts import Receipt

log = structlog.get_logger("ralph")


@dataclass(frozen=True)
class Worker:
    """Everything an attempt needs, for one work tree. Nothing here is global."""

    root: Path
    settings: Settings
    agent: Agent
    env: Mapping[str, str]
    events: EventLog
    state: StateStore
    stop: Stop
    branch: str
    spans: Spans = field(default_factory=NoSpans)
    notify: Notifier = field(default_factory=lambda: Notifier(None))
    done: repo.DoneTasks = field(default_factory=repo.DoneTasks)

    @property
    def ralph_dir(self) -> Path:
        return self.root / repo.STATE_DIR


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended."""

    status: Literal["committed", "failed", "interrupted", "already_done"]
    reason: str = ""
    summary: str = ""
    commit: str | None = None
    report: AgentReport = AgentReport()
    retry_at: datetime | None = None


def max_attempts(worker: Worker, spec: Spec) -> int:
    return spec.max_attempts or worker.settings.max_attempts


async def run_attempt(worker: Worker, spec: Spec, attempt: int) -> AttemptResult:
    """Run attempt number ``attempt`` of ``spec`` from the current HEAD."""
    with worker.spans.span("ralph.attempt", task=spec.id, attempt=attempt) as annotate:
        result = await _run_attempt(worker, spec, attempt)
        annotate(status=result.status, reason=result.reason or None, commit=result.commit)
        return result


async def _run_attempt(worker: Worker, spec: Spec, attempt: int) -> AttemptResult:
    worker.notify.status(f"task {spec.id} attempt {attempt}")
    start = await to_thread.run_sync(repo.head_commit, worker.root)
    attempt_dir = _attempt_dir(worker, spec.id, attempt)
    prompt_file, learnings_file = attempt_dir / "prompt.md", attempt_dir / "learnings.md"
    prompt_file.write_text(build_prompt(_prompt_context(worker, spec, attempt)), encoding="utf-8")
    learnings_file.touch()
    await to_thread.run_sync(save_baseline, worker, attempt_dir)
    intent = AttemptIntent(spec.id, attempt, start, worker.branch, str(attempt_dir))
    worker.state.begin_attempt(intent)
    worker.events.emit("attempt_started", task=spec.id, attempt=attempt, start_commit=start)
    log.info("ralph.attempt_started", start_commit=start[:12], dir=str(attempt_dir))

    def started(pgid: int) -> None:
        worker.state.begin_attempt(dataclasses.replace(intent, pgid=pgid))

    ran, report = await _run_agent(
        worker, spec, attempt, prompt_file, learnings_file, attempt_dir, started
    )
    verdict, check_seconds = await _judge(worker, spec, attempt, start, ran, report, attempt_dir)
    totals = worker.state.add_usage(
        spec.id,
        spec.digest,
        agent_seconds=ran.duration,
        check_seconds=check_seconds,
        input_tokens=report.input_tokens,
        output_tokens=report.output_tokens,
        cost_usd=report.cost_usd,
    )
    learnings = memory.read_learnings_file(
        learnings_file, limit=worker.settings.max_learnings_per_attempt
    )
    if verdict is None:
        worker.state.begin_attempt(dataclasses.replace(intent, phase="committing"))
        receipt = Receipt(
            task=spec.id,
            attempts=attempt,
            agent=worker.agent.name,
            model=worker.agent.model(),
            agent_seconds=totals.get("agent_seconds", 0.0),
            check_seconds=totals.get("check_seconds", 0.0),
            input_tokens=totals.get("input_tokens"),
            output_tokens=totals.get("output_tokens"),
            cost_usd=totals.get("cost_usd"),
        )
        try:
            result = await _commit(worker, spec, receipt, start, learnings)
        except repo.CommitRejected as exc:
            # With run_hooks, a hook may refuse the commit: that is the gate saying no.
            verdict = Verdict("commit_rejected", failure_summary(str(exc), exc.output))
    if verdict is not None:
        result = await _roll_back(worker, spec, attempt, start, verdict, learnings, attempt_dir)
    worker.state.end_attempt()
    return dataclasses.replace(result, report=report)


async def _run_agent(
    worker: Worker,
    spec: Spec,
    attempt: int,
    prompt_file: Path,
    learnings_file: Path,
    attempt_dir: Path,
    started: Callable[[int], None],
) -> tuple[ProcessResult, AgentReport]:
    command = worker.agent.command(prompt_file)
    env = agent_environment(worker.env, command)
    env.update(
        RALPH_TASK_ID=spec.id,
        RALPH_ATTEMPT=str(attempt),
        RALPH_PROMPT_FILE=str(prompt_file),
        RALPH_LEARNINGS_FILE=str(learnings_file),
    )
    log_path = attempt_dir / "agent.log"
    with worker.spans.span(
        "ralph.agent", agent=worker.agent.name, model=worker.agent.model()
    ) as annotate:
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
        report = worker.agent.report(run, datetime.now(UTC))
        annotate(
            outcome=result.outcome,
            exit_code=result.exit_code,
            duration_s=round(result.duration, 3),
            **report.as_event(),
        )
    worker.events.emit(
        "agent_exited",
        task=spec.id,
        attempt=attempt,
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
    return result, report


async def _judge(
    worker: Worker,
    spec: Spec,
    attempt: int,
    start: str,
    ran: ProcessResult,
    report: AgentReport,
    attempt_dir: Path,
) -> tuple[Verdict | None, float]:
    """Fold HEAD back, then the gate: the agent's exit, the change, the checks."""
    settings = worker.settings
    tampering = await to_thread.run_sync(guard_baseline, worker, spec.id, start, attempt_dir)
    specs = settings.specs_dir.as_posix()
    changes = await to_thread.run_sync(repo.stage_changes, worker.root, start, specs)
    interrupted = _agent_verdict(ran, report) if ran.outcome == "stopped" else None
    verdict = (
        interrupted  # a stop is nobody's fault: the attempt must not count
        or tampering
        or _agent_verdict(ran, report)
        or judge_changes(
            changes,
            protected=settings.protected_globs(),
            append_only=settings.append_only,
            allow_empty=spec.allow_empty,
        )
    )
    if verdict is not None:
        return verdict, 0.0
    results = await run_checks(
        [*settings.checks, *spec.checks],
        root=worker.root,
        env=worker.env,
        log_dir=attempt_dir,
        timeout=settings.check_timeout,
        grace=settings.kill_grace,
        stop=worker.stop,
        spans=worker.spans,
    )
    for result in results:
        worker.events.emit(
            "check_finished",
            task=spec.id,
            attempt=attempt,
            command=result.command,
            outcome=result.outcome,
            exit_code=result.exit_code,
            passed=result.ok,
            duration_s=round(result.duration, 3),
        )
    seconds = sum(result.duration for result in results)
    if any(result.outcome == "stopped" for result in results):
        return Verdict("interrupted", f"ralph was asked to stop ({worker.stop.reason})."), seconds
    return check_verdict(results), seconds


def save_baseline(worker: Worker, attempt_dir: Path) -> None:
    """Record what git's view of the change won't show, before the agent starts.

    That is .git itself (refs, hooks, config), git-ignored files in protected paths, and
    the specs the user has not committed yet, which are copied aside so no reset of the
    tree can lose them.
    """
    user_specs = _spec_signature(worker)
    for path, digest in user_specs.items():
        if digest is not None:
            copy = attempt_dir / "user-specs" / path
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes((worker.root / path).read_bytes())
    baseline = {
        "git": repo.snapshot_to_json(repo.snapshot_git(worker.root)),
        "ignored_protected": sorted(
            repo.ignored_files(worker.root, worker.settings.protected_globs())
        ),
        "user_specs": user_specs,
    }
    write_atomic(attempt_dir / "baseline.json", json.dumps(baseline))


def _load_baseline(attempt_dir: Path) -> dict[str, Any] | None:
    try:
        baseline: dict[str, Any] = json.loads((attempt_dir / "baseline.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None  # killed before the baseline was written: the agent never started
    return baseline


def _spec_signature(worker: Worker) -> dict[str, str | None]:
    """Uncommitted paths under specs_dir with a hash of their content (None: deleted)."""
    specs = worker.settings.specs_dir.as_posix()
    signature: dict[str, str | None] = {}
    for path in repo.dirty_paths(worker.root, under=specs):
        full = worker.root / path
        signature[path] = hashlib.sha256(full.read_bytes()).hexdigest() if full.is_file() else None
    return signature


def guard_baseline(worker: Worker, task_id: str, start: str, attempt_dir: Path) -> Verdict | None:
    """Undo what the agent did behind git's back, and say whether that fails the attempt.

    Moving HEAD or making refs is folded into the change. Touching hooks, config or
    excludes, hiding files from git in protected paths, or changing a spec (committed
    or not) fails the attempt; .git and hidden files are put back at once.
    """
    root = worker.root
    if repo.fold_head(root, start, worker.branch):
        worker.events.emit("head_restored", task=task_id, start_commit=start)
        log.warning("ralph.head_restored", detail="the agent moved HEAD; its changes are kept")
    baseline = _load_baseline(attempt_dir)
    if baseline is None:
        return None
    tampered = repo.restore_git(root, repo.snapshot_from_json(baseline["git"]), worker.branch)
    hidden = repo.ignored_files(root, worker.settings.protected_globs()) - set(
        baseline["ignored_protected"]
    )
    for path in hidden:
        _move_aside(root / path, attempt_dir / "specs-changed-during-attempt" / path)
    before, after = baseline["user_specs"], _spec_signature(worker)
    specs_touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if specs_touched:
        _revert_specs(worker, start, attempt_dir, specs_touched, before)
    if tampered:
        return Verdict("git_tampered", f"The agent changed {', '.join(tampered)} (restored).")
    if hidden or specs_touched:
        listed = ", ".join(sorted(hidden) + specs_touched)
        return Verdict("protected", f"The attempt changed protected paths: {listed}")
    return None


def _revert_specs(
    worker: Worker, start: str, attempt_dir: Path, paths: list[str], before: dict[str, Any]
) -> None:
    """Put specs back as they were before the attempt; keep what was found in their place.

    ralph can't tell an agent's edit from a person's made during the attempt, so the
    found version is moved aside, never deleted, and the log says where.
    """
    tracked = set(repo.tracked_files(worker.root, start, paths))
    for path in paths:
        target = worker.root / path
        if target.is_file():
            aside = attempt_dir / "specs-changed-during-attempt" / path
            aside.parent.mkdir(parents=True, exist_ok=True)
            aside.write_bytes(target.read_bytes())
            log.warning("ralph.spec_moved_aside", path=path, kept_at=str(aside))
        if before.get(path) is not None:
            write_atomic(target, (attempt_dir / "user-specs" / path).read_bytes())
        elif path not in before and path in tracked:
            repo.checkout_paths(worker.root, start, [path])
        else:
            target.unlink(missing_ok=True)


def _move_aside(path: Path, aside: Path) -> None:
    """Take a file out of the tree without losing it (the log says where it went)."""
    if not path.is_file():
        return
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.replace(aside)
    log.warning("ralph.file_moved_aside", path=str(path), kept_at=str(aside))


def reset_tree(worker: Worker, commit: str) -> None:
    """Reset the tree to ``commit``, leaving the specs folder as it is."""
    repo.restore(worker.root, commit, keep=worker.settings.specs_dir.as_posix())


def _agent_verdict(ran: ProcessResult, report: AgentReport) -> Verdict | None:
    if ran.outcome == "stopped":
        return Verdict("interrupted", "ralph was asked to stop while the agent ran.")
    if ran.outcome == "timeout":
        return Verdict(
            "timeout", failure_summary("The agent ran past the attempt timeout.", ran.tail)
        )
    if report.failure in (FailureClass.AUTH, *TRANSIENT):
        assert report.failure is not None
        what = f"The agent's model API failed ({report.failure.value}): {report.detail}"
        return Verdict(report.failure.value, failure_summary(what, ran.tail), report.retry_at)
    if ran.exit_code != 0:
        what = f"The agent exited with code {ran.exit_code}."
        return Verdict("crash", failure_summary(what, ran.tail))
    return None


async def _commit(
    worker: Worker, spec: Spec, receipt: Receipt, start: str, learnings: list[str]
) -> AttemptResult:
    attempt = receipt.attempts
    if spec.id in await to_thread.run_sync(worker.done.read, worker.root):
        # Never commit a task twice, even if something else committed it meanwhile.
        await to_thread.run_sync(reset_tree, worker, start)
        await commit_learnings_only(worker, spec.id, attempt, learnings)
        return AttemptResult("already_done")
    added = _add_learnings(worker, spec.id, learnings)
    if added:
        await to_thread.run_sync(
            repo.stage_paths, worker.root, [worker.settings.memory_file.as_posix()]
        )
    message = repo.task_message(spec.title, receipt.trailers())
    with worker.spans.span("ralph.commit", task=spec.id, attempt=attempt) as annotate:
        sha = await to_thread.run_sync(
            lambda: repo.commit(worker.root, message, run_hooks=worker.settings.run_hooks)
        )
        annotate(commit=sha, **receipt.trailers())
    # The checks may have left files behind; the next task starts from exactly the commit.
    await to_thread.run_sync(reset_tree, worker, sha)
    worker.events.emit("committed", task=spec.id, attempt=attempt, commit=sha, learnings=len(added))
    _learnings_committed(worker, spec.id, added)
    return AttemptResult("committed", commit=sha)


async def _roll_back(
    worker: Worker,
    spec: Spec,
    attempt: int,
    start: str,
    verdict: Verdict,
    learnings: list[str],
    attempt_dir: Path,
) -> AttemptResult:
    diff = attempt_dir / "changes.diff"
    await to_thread.run_sync(repo.save_diff, worker.root, start, diff)
    await to_thread.run_sync(reset_tree, worker, start)
    worker.events.emit(
        "rolled_back",
        task=spec.id,
        attempt=attempt,
        reason=verdict.reason,
        summary=verdict.summary[:2000],
        diff=str(diff),
    )
    log.warning("ralph.attempt_failed", reason=verdict.reason, diff=str(diff))
    await commit_learnings_only(worker, spec.id, attempt, learnings)
    status: Literal["failed", "interrupted"] = (
        "interrupted" if verdict.reason == "interrupted" else "failed"
    )
    return AttemptResult(status, verdict.reason, verdict.summary, retry_at=verdict.retry_at)


async def commit_learnings_only(
    worker: Worker, task_id: str, attempt: int, learnings: list[str], subject: str = ""
) -> None:
    """Keep what a failed attempt learned, in a commit that changes only the memory file."""
    added = _add_learnings(worker, task_id, learnings)
    if not added:
        return
    memory_path = worker.settings.memory_file.as_posix()
    await to_thread.run_sync(repo.stage_paths, worker.root, [memory_path])
    message = repo.task_message(
        subject or f"Learnings from attempt {attempt} of {task_id}",
        {repo.LEARNINGS_TRAILER: task_id},
    )
    try:
        await to_thread.run_sync(
            lambda: repo.commit(worker.root, message, run_hooks=worker.settings.run_hooks)
        )
    except repo.CommitRejected as exc:
        # The learnings stay in the attempt's learnings.md; the tree must stay clean.
        await to_thread.run_sync(repo.restore_paths, worker.root, "HEAD", [memory_path])
        log.error("ralph.learnings_not_committed", reason=str(exc), output=exc.output[-500:])
        return
    _learnings_committed(worker, task_id, added)


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


def _prompt_context(worker: Worker, spec: Spec, attempt: int) -> PromptContext:
    settings = worker.settings
    return PromptContext(
        spec=spec,
        attempt=attempt,
        max_attempts=max_attempts(worker, spec),
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
