"""``ralph run``: the daemon, or a batch with --once; wires settings, repository, lock,
agent, the shared queue when there is one, and the loop."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import click
import structlog

from ralph import agents
from ralph.backlog.state import StateStore
from ralph.cli.app import Context, agent_problems
from ralph.durations import parse_deadline
from ralph.engine import loop
from ralph.engine.claims import Claims, FleetClaims, LocalClaims
from ralph.engine.integration import Integration, LocalBranch, RemoteBranch
from ralph.engine.ledger import RunOptions
from ralph.engine.worker import Run
from ralph.errors import SettingsError, UsageError
from ralph.observe.telemetry import EventLog, new_run_id
from ralph.observe.tracing import spans_from_environment
from ralph.runtime import cgroups, sandbox
from ralph.runtime.lock import RepoLock
from ralph.runtime.processes import Stop, become_subreaper
from ralph.runtime.service import Notifier, beat
from ralph.settings import Settings
from ralph.vcs import repo
from ralph.vcs.gitenv import Git, GitEnv, records_dir

if TYPE_CHECKING:
    from ralph.fleet import FleetQueue

log = structlog.get_logger("ralph")


@click.command("run")
@click.option("--once", is_flag=True, help="Work through the backlog, then exit (for cron).")
@click.option("--max-tasks", type=click.IntRange(min=1), help="Stop after N tasks were attempted.")
@click.option("--deadline", help="Take no new task after this time (06:00) or duration (6h).")
@click.option("--agent", help="Override the agent setting for this run.")
@click.option("--max-attempts", type=int, help="Override max_attempts for this run.")
@click.option("--workers", type=int, help="Agents at once, each in its own worktree.")
@click.pass_obj
def run_command(
    app: Context,
    *,
    once: bool,
    max_tasks: int | None,
    deadline: str | None,
    agent: str | None,
    max_attempts: int | None,
    workers: int | None,
) -> None:
    """Run the loop: the daemon by default, a batch with --once."""
    root = app.root()
    settings = app.settings(root, agent=agent, max_attempts=max_attempts, workers=workers)
    deadline_at = _deadline(deadline)
    problems = agent_problems(settings, root)
    if problems:
        raise SettingsError(problems[0])
    the_agent = agents.make_agent(settings, root)
    branch = repo.current_branch(root)
    specs_root = root / settings.specs_dir
    if not specs_root.is_dir():
        raise UsageError(f"specs_dir: {settings.specs_dir} does not exist in {root} (ralph init)")
    if settings.sandbox == "bwrap":
        probe = sandbox.check()
        if not probe.works:
            raise SettingsError(f'sandbox = "bwrap": {probe.message}')
    records = records_dir(root, os.environ)
    with _lock(root, records):
        repo.ensure_excluded(root, the_agent.excludes())
        become_subreaper()
        environment = dict(os.environ)
        scratch = _fresh_scratch(records)
        git_env = GitEnv.snapshot(root, environment, scratch)
        cgroup = cgroups.make_parent(f"ralph-{os.getpid()}")
        state = StateStore(records, legacy=root / repo.STATE_DIR)
        events = EventLog(root / repo.STATE_DIR / "events.jsonl", new_run_id())
        stop = Stop()
        git = Git(root, git_env)
        local = LocalBranch(git, branch, state, events, stop, state.dir / "scratch")
        fleet, claims, integration = _fleet(settings, local)
        the_run = Run(
            root=root,
            settings=settings,
            agent=the_agent,
            env=environment,
            events=events,
            state=state,
            stop=stop,
            branch=branch,
            git=git,
            spans=spans_from_environment(environment),
            notify=Notifier.from_environment(environment),
            cgroups=cgroup,
            integration=integration,
            claims=claims,
            fleet=fleet,
        )
        options = RunOptions(once=once, max_tasks=max_tasks)
        try:
            code = anyio.run(_serve, the_run, options, deadline_at)
        finally:
            the_run.spans.shutdown()
            git_env.discard()
            if cgroup is not None:
                cgroups.remove(cgroup)
    sys.exit(code)


def _lock(root: Path, records: Path) -> RepoLock:
    return RepoLock(root / repo.STATE_DIR / "lock", records.parent)


def _fresh_scratch(records: Path) -> Path:
    """This process's private folder in ralph's records; those of dead ralphs are removed."""
    runs = records / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in runs.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    for old in cgroups.stale_parents("ralph-", _alive):
        cgroups.remove(old)
    return runs / str(os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _deadline(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_deadline(text, datetime.now().astimezone())
    except ValueError as exc:
        raise UsageError(f"--deadline: {exc}") from None


async def _serve(the_run: Run, options: RunOptions, deadline: datetime | None) -> int:
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_signals, the_run)
        group.start_soon(beat, the_run.notify, the_run.ralph_dir)
        if deadline is not None:
            group.start_soon(_stop_at, deadline, the_run.stop)
        if the_run.fleet is not None:
            if not await _join_fleet(the_run, options):
                the_run.notify.stopping()
                group.cancel_scope.cancel()
                return 0  # asked to stop while waiting for the queue
            group.start_soon(the_run.fleet.maintain)
        try:
            await loop.prepare(the_run)  # recovery finishes even if a signal arrives meanwhile
            the_run.notify.ready("ready: working through the backlog")
            code = await loop.run(the_run, options)
        finally:
            if the_run.fleet is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await the_run.fleet.close()
        the_run.notify.stopping()
        group.cancel_scope.cancel()
    return code


def _fleet(settings: Settings, local: LocalBranch) -> tuple[FleetQueue | None, Claims, Integration]:
    """With the ``queue`` setting: the shared queue (not yet opened), claims from it, and the
    remote's branch as the place changes land; else nothing of that."""
    if settings.queue is None:
        return None, LocalClaims(), local
    try:
        from ralph.fleet import FleetQueue
    except ImportError:
        raise SettingsError(
            "queue: needs the queue extra: pip install 'ralphd[queue]' (procrastinate, psycopg)"
        ) from None
    if not local.git.attempt("remote", "get-url", settings.remote).ok:
        raise SettingsError(
            f"queue needs remote: no remote named {settings.remote!r} in this clone "
            "(set remote, or `git remote add`)"
        )
    queue = FleetQueue(settings.queue, stall_timeout=settings.stall_timeout)
    claims = FleetClaims(queue)
    return queue, claims, RemoteBranch(local, settings.remote, before_push=claims.still_held)


async def _join_fleet(the_run: Run, options: RunOptions) -> bool:
    """Open the shared queue and register: --once gives up at once when PostgreSQL can't be
    reached (exit 75: try again later); the daemon waits with backoff and says so, until a
    stop request (then False)."""
    from ralph.fleet import QueueUnavailable, retrying

    assert the_run.fleet is not None
    fleet = the_run.fleet
    if options.once:
        await fleet.open()
    else:

        def waiting(error: QueueUnavailable, seconds: float, tries: int) -> None:
            the_run.notify.status(f"waiting for the queue ({error}); next try in {seconds:.0f}s")

        async def sleep_unless_stopped(seconds: float) -> None:
            with anyio.move_on_after(seconds):
                await the_run.stop.requested.wait()

        async for attempt in retrying(on_wait=waiting, sleep=sleep_unless_stopped):
            if the_run.stop.is_requested:
                return False
            with attempt:
                await fleet.open()
    await fleet.register(slots=the_run.settings.workers, run_id=the_run.events.run_id)
    log.info(
        "ralph.fleet_joined", queue=fleet.where, host=fleet.host, slots=the_run.settings.workers
    )
    return True


async def _watch_signals(the_run: Run) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            log.warning(
                "ralph.signal",
                signal=name,
                action="stopping now" if the_run.stop.is_requested else "stopping after cleanup",
            )
            the_run.notify.stopping()
            the_run.stop.request(name)


async def _stop_at(deadline: datetime, stop: Stop) -> None:
    await anyio.sleep(max(0.0, (deadline - datetime.now().astimezone()).total_seconds()))
    log.warning("ralph.deadline_reached", deadline=deadline.isoformat(timespec="minutes"))
    stop.request("deadline")
