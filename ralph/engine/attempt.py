"""One attempt: a fresh agent on one task in the worker's own worktree, judged by the gate,
landed through the merge queue or rolled back.

``_run_attempt`` is the contract's eight steps, in order. The agent never works in the
user's tree: people may commit, pull and drop specs there while it works.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import structlog
from anyio import to_thread

from ralph.agents import AgentReport, AgentRun, agent_environment, keys
from ralph.agents.live import Signal
from ralph.backlog.specs import Spec
from ralph.backlog.state import AttemptIntent
from ralph.durations import format_duration
from ralph.engine import guard, sandboxing, secrets
from ralph.engine.gate import Verdict, check_verdict, judge_entries
from ralph.engine.gate import run_checks as run_check_commands
from ralph.engine.landing import Change, Landed, MergeQueue
from ralph.engine.live import LiveAgent
from ralph.engine.prompt import PromptContext, build_prompt, failure_summary
from ralph.engine.worker import Worker
from ralph.memory import file as memory
from ralph.memory.learnings import quarantine, screened, to_review
from ralph.outcome import TRANSIENT, Reason
from ralph.runtime import cgroups
from ralph.runtime.processes import ProcessResult, ProcessTree, run_in_group
from ralph.vcs import trees
from ralph.vcs.gitenv import Git
from ralph.vcs.receipts import Receipt

log = structlog.get_logger("ralph")

DIFF_CAP = 64 * 1024 * 1024
NESTED_CAP = 256 * 1024 * 1024


@dataclass(frozen=True)
class Attempt:
    """One attempt of one task: where it starts, where it works and where its files are."""

    spec: Spec
    number: int
    start: str
    """The commit the attempt starts from: the branch's tip when it began."""
    dir: Path
    intent: IntentFile
    git_files: guard.GitFiles
    refs: dict[str, str]
    tree: Git
    """git in the worker's worktree, its git directory named explicitly."""

    @property
    def prompt_file(self) -> Path:
        return self.dir / "prompt.md"

    @property
    def learnings_file(self) -> Path:
        return self.dir / "learnings.md"


class IntentFile:
    """The worker's attempt record on disk, updated as the attempt learns things recovery
    needs (the agent's process group, its cgroup, the processes seen in its tree)."""

    def __init__(self, worker: Worker, intent: AttemptIntent) -> None:
        self._worker = worker
        self.current = intent
        worker.run.state.begin_attempt(intent)

    def update(self, **changes: object) -> None:
        self.current = dataclasses.replace(self.current, **changes)  # type: ignore[arg-type]
        self._worker.run.state.begin_attempt(self.current)


@dataclass(frozen=True)
class AgentRan:
    """How the agent's run ended and what its output says."""

    process: ProcessResult
    report: AgentReport
    stall: str = ""
    """``agent_stall_timeout`` in words, for a stalled run's summary."""


@dataclass(frozen=True)
class Candidate:
    """The attempt's change as git objects: the agent's tree on the start commit, and the
    tree the checks see and the commit holds (learnings merged into the memory file)."""

    tree: str
    checked_tree: str
    learnings: tuple[str, ...]
    entries: tuple[trees.Entry, ...]


@dataclass(frozen=True)
class Judged:
    """Step 5's answer: the candidate when there is one, and a verdict when it can't pass."""

    candidate: Candidate | None
    verdict: Verdict | None


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


async def run_attempt(worker: Worker, queue: MergeQueue, spec: Spec, number: int) -> AttemptOutcome:
    """Run attempt number ``number`` of ``spec`` from the branch's tip."""
    run = worker.run
    with run.spans.span("ralph.attempt", task=spec.id, attempt=number) as annotate:
        outcome = await _run_attempt(worker, queue, spec, number)
        annotate(status=outcome.reason.value, commit=outcome.commit)
        return outcome


async def _run_attempt(
    worker: Worker, queue: MergeQueue, spec: Spec, number: int
) -> AttemptOutcome:
    attempt = await record_start(worker, spec, number)  # 1. start commit, worktree, intent
    await write_prompt(worker, attempt)  # 2. the task, memory, last failure, rules
    ran = await run_agent(worker, attempt)  # 3. in its worktree, its own group and cgroup
    tampered = await undo_git_moves(worker, attempt)  # 4. .git and refs back, before any git
    judged = await judge_change(worker, attempt, ran, tampered)  # 5. the exact tree, its paths
    checked = await run_checks(worker, attempt, judged)  # 6. in a checkout of exactly that tree
    receipt = await record_usage(worker, attempt, ran, checked)
    if checked.verdict is None and judged.candidate is not None:
        outcome = await commit(worker, queue, attempt, judged.candidate, receipt)  # 7.
    else:
        assert checked.verdict is not None
        outcome = await roll_back(worker, queue, attempt, checked.verdict, judged)  # 8.
    await to_thread.run_sync(worker.run.state.end_attempt, worker.number)
    return dataclasses.replace(outcome, report=ran.report)


async def record_start(worker: Worker, spec: Spec, number: int) -> Attempt:
    """Step 1: the start commit, a clean worktree there, .git as it is, the durable intent."""
    run = worker.run
    who = f"{worker.name}: " if run.settings.workers > 1 else ""
    run.notify.status(f"{who}task {spec.id} attempt {number}")
    start = await to_thread.run_sync(run.target.tip)
    attempt_dir = await to_thread.run_sync(_attempt_dir, worker, spec.id, number)
    tree = await to_thread.run_sync(_fresh_worktree, worker, start)
    common = Path(run.git.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip())
    git_files = await to_thread.run_sync(guard.take, common, tree.git_dir)
    refs = await to_thread.run_sync(guard.refs, run.git)
    await to_thread.run_sync(guard.save, worker.scratch / guard.BASELINE, git_files, refs)
    intent = AttemptIntent(
        task_id=spec.id,
        attempt=number,
        start_commit=start,
        branch=run.branch,
        attempt_dir=str(attempt_dir),
        worker=worker.number,
        worktree=str(worker.worktree),
        branch_tip=start,
        since=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    intent_file = await to_thread.run_sync(IntentFile, worker, intent)
    run.events.emit(
        "attempt_started", task=spec.id, attempt=number, start_commit=start, worker=worker.number
    )
    log.info("ralph.attempt_started", start_commit=start[:12], dir=str(attempt_dir))
    return Attempt(spec, number, start, attempt_dir, intent_file, git_files, refs, tree)


def _fresh_worktree(worker: Worker, start: str) -> Git:
    """The worker's worktree at ``start`` (ignored files kept), a copy of its index as ralph
    made it, and an empty TMPDIR."""
    tree = trees.prepare_worktree(worker.run.git, worker.worktree, start)
    worker.scratch.mkdir(parents=True, exist_ok=True)
    trees.copy_index(tree, worker.scratch / "base.index")
    shutil.rmtree(worker.tmpdir, ignore_errors=True)
    worker.tmpdir.mkdir(parents=True, exist_ok=True)
    return tree


async def write_prompt(worker: Worker, attempt: Attempt) -> None:
    """Step 2: the prompt file, and an empty file for the agent's learnings."""

    def write() -> None:
        text = build_prompt(_prompt_context(worker, attempt))
        # A spec path that is not UTF-8 (a file name is bytes) shows as \x escapes.
        _write_new(attempt.prompt_file, text.encode("utf-8", errors="backslashreplace"))
        _write_new(attempt.learnings_file, b"")

    await to_thread.run_sync(write)


async def run_agent(worker: Worker, attempt: Attempt) -> AgentRan:
    """Step 3: the agent at the root of the worktree, in its own group (and cgroup), within
    the timeout; every process it starts is stopped when it ends."""
    run, spec = worker.run, attempt.spec
    command = run.agent.command(attempt.prompt_file)
    env = agent_environment(sandboxing.environment(run, {}), command)
    env.update(_attempt_variables(worker, attempt))
    files = [attempt.prompt_file, attempt.learnings_file]
    argv = await to_thread.run_sync(lambda: sandboxing.boxed(worker, command.argv, files=files))
    log_path = attempt.dir / "agent.log"
    tree = await to_thread.run_sync(_process_tree, worker, attempt)

    def started(pgid: int) -> None:
        attempt.intent.update(pgid=pgid, cgroup=str(tree.cgroup) if tree.cgroup else None)

    def sampled(seen: ProcessTree) -> None:
        attempt.intent.update(processes=tuple(seen.seen.items()))

    live = _live_agent(worker, attempt)
    model = run.agent.model()
    with run.spans.span("ralph.agent", agent=run.agent.name, model=model) as annotate:
        async with anyio.create_task_group() as group:
            if live is not None:
                group.start_soon(_show_live, worker, attempt, live)
            result = await run_in_group(
                argv,
                cwd=worker.worktree,
                env=env,
                stdin=command.stdin,
                log_path=log_path,
                timeout=spec.timeout or run.settings.attempt_timeout,
                grace=run.settings.kill_grace,
                stop=run.stop,
                on_start=started,
                tree=tree,
                on_sample=sampled,
                watch=live.watch(run.settings.agent_stall_timeout) if live else None,
            )
            group.cancel_scope.cancel()
        agent_run = AgentRun(result.outcome, result.exit_code, log_path, result.tail)
        report = await to_thread.run_sync(run.agent.report, agent_run, datetime.now(UTC))
        if live is not None and live.halting is not None and result.outcome == "halted":
            report = _halted_report(report, live.halting)
        annotate(
            outcome=result.outcome,
            exit_code=result.exit_code,
            duration_s=round(result.duration, 3),
            **report.as_event(),
        )
    if tree.cgroup is not None:
        await to_thread.run_sync(cgroups.remove, tree.cgroup)
    _agent_exited(worker, attempt, result, report)
    return AgentRan(result, report, format_duration(run.settings.agent_stall_timeout))


def _live_agent(worker: Worker, attempt: Attempt) -> LiveAgent | None:
    """The attempt's live reading, for a preset whose CLI streams events ralph reads."""
    run = worker.run
    reader = run.agent.live_reader(lambda: datetime.now(UTC))
    if reader is None:
        return None

    def record(event: dict[str, str]) -> None:
        attempt.intent.update(agent_event=event)

    where = {"task": attempt.spec.id, "attempt": attempt.number, "worker": worker.number}
    return LiveAgent(reader, events=run.events, where=where, record=record)


LIVE_STATUS_EVERY = 10.0
"""Seconds between STATUS lines saying what the agent last printed, while it runs."""


async def _show_live(worker: Worker, attempt: Attempt, live: LiveAgent) -> None:
    """The service manager's STATUS line: the attempt, and the agent's last event and its age."""
    run = worker.run
    who = f"{worker.name}: " if run.settings.workers > 1 else ""
    while True:
        await anyio.sleep(LIVE_STATUS_EVERY)
        said = live.describe(datetime.now(UTC))
        if said is not None:
            run.notify.status(f"{who}task {attempt.spec.id} attempt {attempt.number}; {said}")


def _halted_report(report: AgentReport, signal: Signal) -> AgentReport:
    """What ralph stopped the agent on, read live, is why the run failed."""
    assert signal.reason is not None
    what = signal.detail or signal.kind.value
    if signal.status is not None and str(signal.status) not in what:
        what = f"HTTP {signal.status}: {what}"
    return dataclasses.replace(
        report, failure=signal.reason, detail=what, retry_at=signal.retry_at or report.retry_at
    )


def _process_tree(worker: Worker, attempt: Attempt) -> ProcessTree:
    marker = f"RALPH_PROMPT_FILE={attempt.prompt_file}".encode()
    parent = worker.run.cgroups
    cgroup = cgroups.make(parent, f"{worker.name}") if parent is not None else None
    return ProcessTree(cgroup=cgroup, marker=marker)


def _attempt_variables(worker: Worker, attempt: Attempt) -> dict[str, str]:
    return {
        "RALPH_TASK_ID": attempt.spec.id,
        "RALPH_ATTEMPT": str(attempt.number),
        "RALPH_PROMPT_FILE": str(attempt.prompt_file),
        "RALPH_LEARNINGS_FILE": str(attempt.learnings_file),
        "RALPH_WORKER": str(worker.number),
        "TMPDIR": str(worker.tmpdir),
    }


def _agent_exited(
    worker: Worker, attempt: Attempt, result: ProcessResult, report: AgentReport
) -> None:
    run = worker.run
    run.events.emit(
        "agent_exited",
        task=attempt.spec.id,
        attempt=attempt.number,
        worker=worker.number,
        agent=run.agent.name,
        model=run.agent.model(),
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


async def undo_git_moves(worker: Worker, attempt: Attempt) -> Verdict | None:
    """Step 4: before ralph runs any git, put back what the agent did to ``.git``: guarded
    files first (no hook or filter it planted can run), then refs it made or moved. Its
    commits and resets don't matter: ralph builds the commit from the worktree's files."""
    run = worker.run

    def undo() -> tuple[list[str], list[str]]:
        tree = attempt.tree
        common = Path(
            run.git.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip()
        )
        tampered = guard.restore(common, attempt.git_files, tree.git_dir)
        if tree.git_dir is not None:
            trees.repair_dot_git(worker.worktree, tree.git_dir)
        agent_commits = guard.worktree_commits(tree, attempt.start)
        moved = guard.restore_refs(run.git, attempt.refs, run.branch, agent_commits)
        return tampered, moved

    tampered, moved = await to_thread.run_sync(undo)
    if moved:
        run.events.emit(
            "refs_restored",
            task=attempt.spec.id,
            attempt=attempt.number,
            worker=worker.number,
            refs=moved[:50],
        )
        log.warning("ralph.refs_restored", refs=moved[:10], detail="refs the agent made or moved")
    if tampered:
        listed = ", ".join(tampered[:10])
        return Verdict(Reason.GIT_TAMPERED, f"The agent changed {listed} (restored).")
    return None


async def judge_change(
    worker: Worker, attempt: Attempt, ran: AgentRan, tampered: Verdict | None
) -> Judged:
    """Step 5: the change as exactly the tree that would be committed, and the gate's rules
    on it: the agent's exit, protected and append-only paths, nested repositories, symlinks
    out of the tree, an empty change."""
    run = worker.run
    if ran.process.outcome == "stopped":  # a stop is nobody's fault: the attempt must not count
        stopped = Verdict(Reason.INTERRUPTED, "ralph was asked to stop while the agent ran.")
        candidate = await to_thread.run_sync(_candidate, worker, attempt)
        return Judged(candidate, stopped)
    candidate = await to_thread.run_sync(_candidate, worker, attempt)
    nested = [e.path for e in candidate.entries if e.new_mode == trees.GITLINK]
    if nested:
        await to_thread.run_sync(_keep_nested, worker, attempt, nested)
    verdict = (
        tampered
        or _agent_verdict(ran)
        or judge_entries(
            candidate.entries,
            protected=run.settings.protected_globs(),
            append_only=run.settings.append_only,
            allow_empty=attempt.spec.allow_empty,
            touches=attempt.spec.touches,
            allow_nested_repos=run.settings.allow_nested_repos,
            symlink_out=(
                None
                if run.settings.allow_external_symlinks
                else lambda entry: trees.symlink_leaves_tree(run.git, entry)
            ),
        )
    )
    if verdict is None and run.settings.secret_scan:
        verdict = await to_thread.run_sync(_secrets_in, worker, attempt, candidate)
    return Judged(candidate, verdict)


def _secrets_in(worker: Worker, attempt: Attempt, candidate: Candidate) -> Verdict | None:
    """A secret in the lines the change adds fails the attempt; the verdict names the file,
    the line and the kind of secret, never the secret."""
    run = worker.run
    allowlist = secrets.SecretAllowlist.parse(run.settings.secret_allowlist)
    lines = secrets.added_lines(run.git, attempt.start, candidate.tree)
    found = secrets.scan(lines, allowlist, keys.secret_values(run.env))
    if not found:
        return None
    run.events.emit(
        "secret_found",
        task=attempt.spec.id,
        attempt=attempt.number,
        worker=worker.number,
        places=[f"{f.path}:{f.line}" for f in found[:20]],
    )
    return Verdict(Reason.SECRET, secrets.summary(found), secrets=tuple(found))


def _candidate(worker: Worker, attempt: Attempt) -> Candidate:
    run = worker.run
    tree = attempt.tree
    index = worker.scratch / "candidate.index"
    agent_tree = trees.tree_of_worktree(tree, worker.scratch / "base.index", index)
    entries = tuple(trees.entries(run.git, attempt.start, agent_tree))
    learnings = _read_learnings(worker, attempt)
    checked_tree = agent_tree
    if learnings and run.settings.learnings == "auto":
        path = run.settings.memory_file.as_posix()
        current = trees.file_at(run.git, agent_tree, path) or b""
        day = datetime.now(UTC).date().isoformat()
        limit = run.settings.max_learnings_per_attempt
        updated, _added = memory.add_into(
            current, list(learnings), attempt.spec.id, day, limit=limit
        )
        if updated is not None:
            checked_tree = trees.with_file(run.git, agent_tree, path, updated, index)
    return Candidate(agent_tree, checked_tree, learnings, entries)


def _keep_nested(worker: Worker, attempt: Attempt, paths: list[str]) -> None:
    """A nested repository is only a commit id in a diff: keep its files with the attempt."""
    kept = trees.save_nested_repositories(
        worker.worktree, paths, attempt.dir / "nested-repositories.tar", NESTED_CAP
    )
    log.warning("ralph.nested_repositories_kept", paths=kept, kept_at=str(attempt.dir))


def _agent_verdict(ran: AgentRan) -> Verdict | None:
    process, report = ran.process, ran.report
    last_line = _last_line(process.tail)
    if process.outcome == "timeout":
        what = "The agent ran past the attempt timeout."
        return Verdict(Reason.TIMEOUT, failure_summary(what, process.tail), detail=last_line)
    if process.outcome == "stalled":
        what = f"The agent printed nothing for {ran.stall}."
        return Verdict(Reason.STALLED, failure_summary(what, process.tail), detail=last_line)
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


async def run_checks(worker: Worker, attempt: Attempt, judged: Judged) -> Checked:
    """Step 6: every check, in order, at the root of a checkout of exactly the tree that would
    be committed; the first failure decides. Skipped when step 5 already said no."""
    if judged.verdict is not None or judged.candidate is None:
        return Checked(judged.verdict)
    run = worker.run
    commit = await to_thread.run_sync(
        trees.commit_tree,
        run.git,
        judged.candidate.checked_tree,
        [attempt.start],
        f"ralph: candidate for {attempt.spec.id}\n",
    )
    return await check_commit(worker, attempt, commit)


async def check_commit(
    worker: Worker, attempt: Attempt, commit: str, log_dir: Path | None = None
) -> Checked:
    """Check out ``commit`` exactly in the worker's worktree (ignored files gone but
    ``check_cache``) and run every check there."""
    run = worker.run
    settings = run.settings
    await to_thread.run_sync(_checkout_for_checks, worker, attempt, commit)
    variables = {"RALPH_WORKER": str(worker.number), "TMPDIR": str(worker.tmpdir)}
    wrap = await to_thread.run_sync(lambda: sandboxing.wrapper(worker, checks=True))
    results = await run_check_commands(
        [*settings.checks, *attempt.spec.checks],
        root=worker.worktree,
        env=sandboxing.environment(run, variables),
        log_dir=log_dir or attempt.dir,
        timeout=settings.check_timeout,
        grace=settings.kill_grace,
        stop=run.stop,
        spans=run.spans,
        wrap=wrap,
    )
    for result in results:
        run.events.emit(
            "check_finished",
            task=attempt.spec.id,
            attempt=attempt.number,
            worker=worker.number,
            command=result.command,
            outcome=result.outcome,
            exit_code=result.exit_code,
            passed=result.ok,
            duration_s=round(result.duration, 3),
        )
    seconds = sum(result.duration for result in results)
    if any(result.outcome == "stopped" for result in results):
        stopped = f"ralph was asked to stop ({run.stop.reason})."
        return Checked(Verdict(Reason.INTERRUPTED, stopped), seconds)
    return Checked(check_verdict(results), seconds)


def _checkout_for_checks(worker: Worker, attempt: Attempt, commit: str) -> None:
    tree = attempt.tree
    keep = worker.run.settings.check_cache
    trees.reset_worktree(tree, commit, clean_ignored=True, keep=keep)
    shutil.rmtree(worker.tmpdir, ignore_errors=True)
    worker.tmpdir.mkdir(parents=True, exist_ok=True)


async def record_usage(
    worker: Worker, attempt: Attempt, ran: AgentRan, checked: Checked
) -> Receipt:
    """Add this attempt's time, tokens and cost to the task's totals: the commit's receipt."""
    run, spec, report = worker.run, attempt.spec, ran.report
    totals = await to_thread.run_sync(
        lambda: run.state.add_usage(
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
        agent=run.agent.name,
        model=run.agent.model(),
        agent_seconds=totals.get("agent_seconds", 0.0),
        check_seconds=totals.get("check_seconds", 0.0),
        input_tokens=totals.get("input_tokens"),
        output_tokens=totals.get("output_tokens"),
        cost_usd=totals.get("cost_usd"),
    )


async def commit(
    worker: Worker, queue: MergeQueue, attempt: Attempt, candidate: Candidate, receipt: Receipt
) -> AttemptOutcome:
    """Step 7: one commit of the checked tree with the task's title and its trailers, through
    the merge queue (replayed and re-checked when the branch moved). Never twice."""
    run, spec = worker.run, attempt.spec
    refused = await _run_hooks(worker, attempt, receipt)
    if refused is not None:
        return await roll_back(worker, queue, attempt, refused, Judged(candidate, refused))
    change = Change(spec.id, attempt.start, candidate.tree, candidate.learnings, checked=True)

    def message(recheck_seconds: float) -> str:
        total = dataclasses.replace(receipt, check_seconds=receipt.check_seconds + recheck_seconds)
        return task_message(spec.title, total.trailers())

    async def recheck(provisional: str) -> tuple[Verdict | None, float]:
        rechecks = attempt.dir / "recheck"
        rechecks.mkdir(exist_ok=True)
        checked = await check_commit(worker, attempt, provisional, log_dir=rechecks)
        return checked.verdict, checked.seconds

    with run.spans.span("ralph.commit", task=spec.id, attempt=attempt.number) as annotate:
        landed = await queue.land(worker, change, message, recheck)
        annotate(commit=landed.commit if isinstance(landed, Landed) else None)
    if not isinstance(landed, Landed):
        return await roll_back(worker, queue, attempt, landed, Judged(candidate, landed))
    if landed.commit is None:
        await keep_learnings(worker, queue, attempt, candidate.learnings)
        return AttemptOutcome(Reason.ALREADY_DONE)
    run.events.emit(
        "committed",
        task=spec.id,
        attempt=attempt.number,
        worker=worker.number,
        commit=landed.commit,
        learnings=len(landed.added),
        recheck_s=round(landed.recheck_seconds, 3),
    )
    _learnings_committed(worker, spec.id, landed.added)
    if run.settings.learnings == "review":
        await to_thread.run_sync(_to_review, worker, spec.id, list(candidate.learnings))
    return AttemptOutcome(Reason.COMMITTED, commit=landed.commit)


async def _run_hooks(worker: Worker, attempt: Attempt, receipt: Receipt) -> Verdict | None:
    """With ``run_hooks``: the repository's pre-commit and commit-msg hooks, in the checkout
    of the checked tree; a hook saying no is the gate saying no."""
    run = worker.run
    if not run.settings.run_hooks:
        return None
    message_file = attempt.dir / "COMMIT_EDITMSG"
    _write_new(message_file, task_message(attempt.spec.title, receipt.trailers()).encode())
    hooks = await to_thread.run_sync(_user_hooks_path, worker)
    tree = attempt.tree
    for hook, args in (("pre-commit", []), ("commit-msg", [str(message_file)])):
        done = await to_thread.run_sync(
            lambda h=hook, a=args: tree.attempt(  # type: ignore[misc]
                "-c", f"core.hooksPath={hooks}", "hook", "run", "--ignore-missing", h, "--", *a
            )
        )
        if not done.ok:
            what = f"The repository's {hook} hook refused the commit (exit {done.code})."
            return Verdict(Reason.COMMIT_REJECTED, failure_summary(what, done.stderr))
    return None


def _user_hooks_path(worker: Worker) -> str:
    return str(worker.run.git.env.user_hooks)


async def roll_back(
    worker: Worker, queue: MergeQueue, attempt: Attempt, verdict: Verdict, judged: Judged
) -> AttemptOutcome:
    """Step 8: keep the change for forensics, keep the learnings (in a commit of their own);
    the worktree goes back to the start with the next attempt."""
    run, spec = worker.run, attempt.spec
    diff = attempt.dir / "changes.diff"
    if judged.candidate is not None:
        cut = await to_thread.run_sync(
            trees.save_diff, run.git, attempt.start, judged.candidate.tree, diff, DIFF_CAP
        )
        if cut:
            log.warning("ralph.diff_cut", diff=str(diff), cap=DIFF_CAP)
        if verdict.secrets:  # the kept diff must not become the place the secret lives on
            await to_thread.run_sync(_mask_diff, worker, diff, verdict)
    if verdict.secrets:  # nor the worktree, until the next attempt would have reset it
        await to_thread.run_sync(
            lambda: trees.reset_worktree(attempt.tree, attempt.start, clean_ignored=False)
        )
    run.events.emit(
        "rolled_back",
        task=spec.id,
        attempt=attempt.number,
        worker=worker.number,
        reason=verdict.reason.value,
        summary=verdict.summary[:2000],
        diff=str(diff),
    )
    log.warning("ralph.attempt_failed", reason=verdict.reason.value, diff=str(diff))
    learnings = judged.candidate.learnings if judged.candidate else _read_learnings(worker, attempt)
    await keep_learnings(worker, queue, attempt, learnings)
    return AttemptOutcome(verdict.reason, verdict)


async def keep_learnings(
    worker: Worker, queue: MergeQueue, attempt: Attempt, learnings: tuple[str, ...]
) -> None:
    """What an attempt that was not committed learned, in a commit that changes only the
    memory file (or, with ``learnings = "review"``, waiting for review)."""
    await commit_learnings_only(worker, queue, attempt.spec.id, attempt.number, learnings)


async def commit_learnings_only(
    worker: Worker,
    queue: MergeQueue,
    task_id: str,
    attempt: int,
    learnings: tuple[str, ...],
    *,
    subject: str = "",
) -> None:
    """Land ``learnings`` of ``task_id`` in a commit that changes only the memory file."""
    run = worker.run
    if not learnings:
        return
    if run.settings.learnings == "review":
        await to_thread.run_sync(_to_review, worker, task_id, list(learnings))
        return
    tip = await to_thread.run_sync(run.target.tip)
    tree = await to_thread.run_sync(trees.tree_of, run.git, tip)
    change = Change(task_id, tip, tree, learnings, checked=False)
    message = task_message(
        subject or f"Learnings from attempt {attempt} of {task_id}",
        {LEARNINGS_TRAILER: task_id},
    )

    async def no_recheck(_commit: str) -> tuple[Verdict | None, float]:
        return None, 0.0

    landed = await queue.land(worker, change, lambda _seconds: message, no_recheck)
    if isinstance(landed, Landed) and landed.added:
        _learnings_committed(worker, task_id, landed.added)
    elif not isinstance(landed, Landed):
        log.error(
            "ralph.learnings_not_committed",
            task=task_id,
            reason=landed.summary,
            detail="they stay in the attempt's learnings.md",
        )


def _to_review(worker: Worker, task_id: str, learnings: list[str]) -> None:
    day = datetime.now(UTC).date().isoformat()
    to_review(worker.run.root, worker.run.settings, learnings, task_id, day)


def _mask_diff(worker: Worker, diff: Path, verdict: Verdict) -> None:
    text = diff.read_text(encoding="utf-8", errors="surrogateescape")
    masked = secrets.mask(text, list(verdict.secrets), keys.secret_values(worker.run.env))
    diff.write_text(masked, encoding="utf-8", errors="surrogateescape")


def _read_learnings(worker: Worker, attempt: Attempt) -> tuple[str, ...]:
    """The agent's learnings that pass the screen; those it holds back wait for a person
    (``ralph learnings pending``), and each is an event."""
    day = datetime.now(UTC).date().isoformat()
    run, task_id = worker.run, attempt.spec.id
    raw = memory.read_raw_learnings(
        attempt.learnings_file, limit=run.settings.max_learnings_per_attempt
    )
    accepted, held = screened(raw)
    quarantine(run.root, run.settings, held, task_id, day)
    for _text, finding in held:
        run.events.emit(
            "learning_held_back", task=task_id, attempt=attempt.number, rule=finding.rule
        )
        log.warning("ralph.learning_held_back", rule=finding.rule, reason=finding.reason)
    return tuple(accepted)


def _learnings_committed(worker: Worker, task_id: str, added: tuple[memory.Learning, ...]) -> None:
    for learning in added:
        worker.run.events.emit("learning_added", task=task_id, text=learning.text)


TASK_TRAILER = "Ralph-Task"
LEARNINGS_TRAILER = "Ralph-Learnings"


def task_message(title: str, trailers: dict[str, str]) -> str:
    """A commit message: one-line subject, blank line, trailers."""
    subject = " ".join(title.split()) or "ralph task"
    lines = [f"{key}: {value}" for key, value in trailers.items()]
    return f"{subject}\n\n" + "\n".join(lines) + "\n"


def _prompt_context(worker: Worker, attempt: Attempt) -> PromptContext:
    settings, spec = worker.run.settings, attempt.spec
    return PromptContext(
        spec=spec,
        attempt=attempt.number,
        max_attempts=worker.run.max_attempts(spec),
        memory=memory.memory_for_prompt(
            worker.worktree / settings.memory_file,
            settings.memory_budget,
            spec_text=f"{spec.title}\n{spec.body}",
        ),
        memory_file=settings.memory_file.as_posix(),
        last_failure=worker.run.state.last_failure(spec.id, spec.digest),
        protected=settings.protected_globs(),
        append_only=settings.append_only,
        checks=[*settings.checks, *spec.checks],
    )


def _attempt_dir(worker: Worker, task_id: str, attempt: int) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", task_id)
    path = worker.run.ralph_dir / "attempts" / slug / f"{attempt}-{stamp}"
    _safe_dirs(worker.run.ralph_dir, path)
    return path


def _safe_dirs(ralph_dir: Path, path: Path) -> None:
    """Make ``path`` under ``.ralph/`` as real folders: a symlink planted on the way (to make
    ralph write elsewhere) is moved aside first."""
    ralph_dir.mkdir(parents=True, exist_ok=True)
    current = ralph_dir
    for part in path.relative_to(ralph_dir).parts:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            aside = current.with_name(f"{current.name}.not-a-folder-{datetime.now(UTC):%s}")
            current.replace(aside)
            log.warning("ralph.path_set_aside", path=str(current), kept_at=str(aside))
        current.mkdir(exist_ok=True)


def _write_new(path: Path, data: bytes) -> None:
    """Write a file ralph makes, never through a symlink planted at its path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
