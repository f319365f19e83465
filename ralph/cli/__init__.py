"""The command line. It wires everything: settings, repository, lock, agent, loop."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import structlog

from ralph import __version__
from ralph.backlog.snapshot import Backlog
from ralph.backlog.state import StateStore
from ralph.backlog.tasks import State
from ralph.cli.app import Context, agent_problems
from ralph.cli.doctor import Finding, examine
from ralph.cli.learnings import learnings_group
from ralph.cli.run import run_command
from ralph.cli.scaffold import init_repository
from ralph.cli.status import print_status, print_table, queue_view, read_status
from ralph.errors import RalphError, SettingsError, UsageError
from ralph.observe.report import write_report
from ralph.observe.stats import (
    TASK_COLUMNS,
    Stats,
    compute_stats,
    manual_commits,
    parse_since,
    read_all_events,
    summary_rows,
    task_rows,
    work_branch,
)
from ralph.observe.telemetry import EventLog, configure_logging, new_run_id
from ralph.settings import Settings
from ralph.vcs import repo
from ralph.vcs.gitenv import records_dir

log = structlog.get_logger("ralph")


class RalphGroup(click.Group):
    """Turns ralph's expected errors into one line on stderr and the contract's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RalphError as exc:
            _report(ctx, exc)
        except BaseExceptionGroup as group:
            # A task group wraps what its tasks raise; an expected error stays expected.
            expected, rest = group.split(RalphError)
            if expected is None or rest is not None:
                raise
            first: BaseException = expected.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            assert isinstance(first, RalphError)
            _report(ctx, first)


def _report(ctx: click.Context, error: RalphError) -> NoReturn:
    """One line on stderr in the log format asked for, and the contract's exit code."""
    app = ctx.obj if isinstance(ctx.obj, Context) else None
    as_json = app is not None and (
        app.log_format == "json" or (app.log_format == "auto" and not sys.stderr.isatty())
    )
    if as_json:
        log.error("ralph.error", error=str(error), exit_code=error.exit_code)
    else:
        click.echo(f"ralph: {error}", err=True)
    ctx.exit(error.exit_code)


@click.group(cls=RalphGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "path",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Run as if started in PATH (the repository).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="Log rendering on stderr: console on a terminal, JSON lines otherwise.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug events too.")
@click.version_option(__version__, prog_name="ralph")
@click.pass_context
def cli(ctx: click.Context, path: Path, log_format: str, verbose: bool) -> None:
    """ralph: burns down a backlog of coding tasks with a headless agent, gated by your checks."""
    configure_logging(log_format, verbose)  # type: ignore[arg-type]
    ctx.obj = Context(path.resolve(), log_format, verbose)


@cli.command()
@click.pass_obj
def init(app: Context) -> None:
    """Write ralph.toml, specs/ with an example and AGENTS.md (never overwrites)."""
    try:
        root = repo.find_root(app.path)
    except UsageError:
        root = None
    for relative, what in init_repository(root or app.path):
        click.echo(f"{relative}: {what}")
    if root is None:
        click.echo("note: not a git repository yet; run `git init` before `ralph run`")
        return
    repo.ensure_excluded(root)
    click.echo("next: commit these files, write specs, then `ralph run --once` or `ralph run`")


def _backlog(root: Path, settings: Settings) -> Backlog:
    """Every task's state; the tasks a running ralph is attempting show as running."""
    return read_status(root, settings).backlog


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.pass_obj
def status(app: Context, as_json: bool) -> None:
    """Every task with its state, attempts, priority, worker, title and reason."""
    root = app.root()
    print_status(read_status(root, app.settings(root)), as_json)


@cli.command()
@click.pass_obj
def validate(app: Context) -> None:
    """Check the settings and every spec; list each problem with its file and reason."""
    root = app.root()
    try:
        settings = app.settings(root)
    except SettingsError as exc:
        click.echo(f"settings: {exc}")
        sys.exit(1)
    if not (root / settings.specs_dir).is_dir():
        click.echo(f"specs_dir: {settings.specs_dir} does not exist")
        sys.exit(1)
    problems = agent_problems(settings, root) + [
        task.reason if task.state is State.INVALID else f"{task.path}: {task.reason}"
        for task in _backlog(root, settings)
        if task.state is State.INVALID or (task.blocker is not None and not task.blocker.by_failure)
    ]
    for problem in problems:
        click.echo(problem)
    if problems:
        click.echo(f"{len(problems)} problem(s) found", err=True)
        sys.exit(1)
    click.echo("settings and specs are valid")


@cli.command()
@click.argument("task_id")
@click.pass_obj
def retry(app: Context, task_id: str) -> None:
    """Put a failed task back to pending."""
    root = app.root()
    task = _backlog(root, app.settings(root)).get(task_id)
    if task is None:
        raise UsageError(f"no task with id {task_id!r} (see `ralph status`)")
    if task.state is not State.FAILED:
        raise RalphError(f"task {task_id} is {task.state.value}, not failed; nothing to retry")
    state = StateStore(records_dir(root, os.environ), legacy=root / repo.STATE_DIR)
    state.forget(task_id)
    state.wake()
    EventLog(root / repo.STATE_DIR / "events.jsonl", new_run_id()).emit(
        "task_retried", task=task_id
    )
    click.echo(f"{task_id}: pending again")


@cli.command("stats")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
@click.option("--since", help="Count only events from this day (YYYY-MM-DD) or ISO time on.")
@click.pass_obj
def stats_command(app: Context, as_json: bool, since: str | None) -> None:
    """Attempts, success rates, failures, time and cost, from the event log."""
    root = app.root()
    numbers = _stats(root, since)
    queue = _queue(app, root)
    if as_json:
        document = numbers.as_dict()
        document["queue"] = queue
        click.echo(json.dumps(document, indent=2))
        return
    print_table(["OVERALL", ""], [list(row) for row in summary_rows(numbers)])
    if numbers.tasks:
        click.echo("")
        print_table([column.upper() for column in TASK_COLUMNS], task_rows(numbers))
    if queue is not None:
        jobs = ", ".join(f"{status} {count}" for status, count in sorted(queue["jobs"].items()))
        rows = [
            ["jobs by status", jobs or "none"],
            ["put back in the queue", str(queue["requeued"])],
            ["taken from dead processes", str(queue["stalls"])],
            ["processes alive", str(queue["processes"])],
        ]
        click.echo("")
        print_table(["QUEUE (ALL MACHINES)", ""], rows)


def _queue(app: Context, root: Path) -> dict[str, Any] | None:
    """The shared queue's view when ``queue`` is set; stats work without settings too."""
    try:
        settings = app.settings(root)
    except RalphError:
        return None
    return queue_view(settings)


@cli.command("report")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the page (default: .ralph/report.html).",
)
@click.pass_obj
def report_command(app: Context, output: Path | None) -> None:
    """Write the stats and their charts as one self-contained HTML page."""
    root = app.root()
    path = write_report(_stats(root, None), output or root / repo.STATE_DIR / "report.html")
    click.echo(str(path))


def _stats(root: Path, since: str | None) -> Stats:
    try:
        start = parse_since(since) if since else None
    except ValueError:
        raise UsageError(f"--since: {since!r} is not a day (YYYY-MM-DD) or an ISO time") from None
    events = read_all_events(root / repo.STATE_DIR)
    numbers = compute_stats(events, start)
    return numbers.with_manual_commits(manual_commits(root, work_branch(events), start))


@cli.command()
@click.pass_obj
def doctor(app: Context) -> None:
    """Check git, the agent's executable, the check commands, the specs and the lock."""
    root = app.root()
    try:
        settings: Settings | None = app.settings(root)
        findings = [Finding(True, "settings", "valid")]
    except SettingsError as exc:
        settings, findings = None, [Finding(False, "settings", str(exc))]
    findings += examine(root, settings)
    for finding in findings:
        click.echo(finding.render())
    problems = sum(not finding.ok for finding in findings)
    if problems:
        click.echo(f"{problems} problem(s) found", err=True)
        sys.exit(1)


cli.add_command(learnings_group)
cli.add_command(run_command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    entry: Callable[..., Any] = cli
    entry(args=argv, prog_name="ralph")
