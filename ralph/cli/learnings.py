"""``ralph learnings``: list the newest learnings with where they came from, review pending
ones, compact the file, revert what one task taught, audit the memory file and its mirrors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import click

from ralph.memory.learnings import (
    MIRRORS,
    Provenance,
    accept_with_commit,
    audit,
    compact,
    pending_review,
    provenance,
    reject,
    revert,
)
from ralph.runtime.lock import RepoLock
from ralph.settings import Settings
from ralph.vcs import repo


class App(Protocol):
    """What the ``ralph`` group puts in ``ctx.obj`` (ralph.cli.Context)."""

    def root(self) -> Path: ...

    def settings(self, root: Path, **flags: Any) -> Settings: ...


def _noun(count: int) -> str:
    return f"{count} learning" if count == 1 else f"{count} learnings"


def _source(row: Provenance) -> str:
    """Where an entry came from, in a few words: the attempt, agent and model of its task
    commit, a person accepting it, or ``-`` when the history doesn't say."""
    parts = []
    if row.attempt:
        parts.append(f"attempt {row.attempt}")
    if row.agent:
        parts.append(f"{row.agent} ({row.model})" if row.model else row.agent)
    if parts:
        return ", ".join(parts)
    return {"review": "accepted", "compact": "compacted"}.get(row.kind or "", "-")


@click.group("learnings", invoke_without_command=True)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many learnings to list.",
)
@click.pass_context
def learnings_group(ctx: click.Context, limit: int) -> None:
    """List the newest learnings with their task, commit, attempt, agent and model; review,
    compact, revert and audit them."""
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    root = app.root()
    settings = app.settings(root)
    rows = provenance(root, settings, limit)
    if not rows:
        click.echo(f"no learnings in {settings.memory_file} yet")
    width = max((len(row.learning.task_id) for row in rows), default=0)
    sources = [_source(row) for row in rows]
    source_width = max(map(len, sources), default=0)
    for row, source in zip(rows, sources, strict=True):
        learning = row.learning
        commit = row.commit[:12] if row.commit else "uncommitted"
        click.echo(
            f"{learning.day}  {learning.task_id:<{width}}  {commit:<12}  "
            f"{source:<{source_width}}  {learning.text}"
        )
    waiting = pending_review(root)
    if waiting:
        held = sum(1 for item in waiting if item.finding is not None)
        note = f" ({held} held back by the screen)" if held else ""
        click.echo(f"{_noun(len(waiting))} waiting for review{note}: `ralph learnings pending`")


@learnings_group.command("pending")
@click.pass_obj
def pending_command(app: App) -> None:
    """Number the learnings waiting for review, with why the screen held any back."""
    waiting = pending_review(app.root())
    if not waiting:
        click.echo("no learnings waiting for review")
    for number, item in enumerate(waiting, start=1):
        learning = item.learning
        click.echo(f"{number:>3}. [{learning.task_id} · {learning.day}] {learning.text}")
        if item.finding is not None:
            click.echo(f"     held back: {item.finding.rule}: {item.finding.reason}")


@learnings_group.command("accept")
@click.argument("numbers", nargs=-1, type=click.IntRange(min=1))
@click.pass_obj
def accept_command(app: App, numbers: tuple[int, ...]) -> None:
    """Move pending learnings into the memory file, in one commit.

    NUMBERS as `ralph learnings pending` lists them; none: all of them.
    """
    root = app.root()
    settings = app.settings(root)
    with RepoLock(root / repo.STATE_DIR / "lock"):
        accepted, sha = accept_with_commit(root, settings, list(numbers) or None)
    if not accepted:
        click.echo("no learnings waiting for review")
    elif sha is None:
        click.echo(f"accepted {_noun(len(accepted))}; {settings.memory_file} already held them")
    else:
        click.echo(
            f"accepted {_noun(len(accepted))} into {settings.memory_file} (commit {sha[:12]})"
        )


@learnings_group.command("reject")
@click.argument("numbers", nargs=-1, type=click.IntRange(min=1))
@click.pass_obj
def reject_command(app: App, numbers: tuple[int, ...]) -> None:
    """Drop pending learnings; nothing is committed.

    NUMBERS as `ralph learnings pending` lists them; none: all of them.
    """
    root = app.root()
    with RepoLock(root / repo.STATE_DIR / "lock"):
        rejected = reject(root, list(numbers) or None)
    click.echo(
        f"rejected {_noun(len(rejected))}" if rejected else "no learnings waiting for review"
    )


@learnings_group.command("compact")
@click.pass_obj
def compact_command(app: App) -> None:
    """Merge repeated learnings and archive old ones, in one commit."""
    root = app.root()
    settings = app.settings(root)
    with RepoLock(root / repo.STATE_DIR / "lock"):
        done = compact(root, settings, datetime.now(UTC).date())
    if done.commit is None:
        click.echo(f"nothing to compact in {settings.memory_file}")
        return
    click.echo(
        f"compacted {settings.memory_file}: {done.merged} merged, {done.archived} archived "
        f"to {settings.learnings_archive} (commit {done.commit[:12]})"
    )


@learnings_group.command("revert")
@click.argument("task_id", metavar="TASK")
@click.pass_obj
def revert_command(app: App, task_id: str) -> None:
    """Remove every learning labelled TASK from the memory file, in one commit."""
    root = app.root()
    settings = app.settings(root)
    with RepoLock(root / repo.STATE_DIR / "lock"):
        done = revert(root, settings, task_id)
    if done.commit is None:
        click.echo(f"no learnings of task {task_id} in {settings.memory_file}")
        return
    click.echo(
        f"removed {_noun(len(done.removed))} of task {task_id} from {settings.memory_file} "
        f"(commit {done.commit[:12]})"
    )


@learnings_group.command("audit")
@click.pass_context
def audit_command(ctx: click.Context) -> None:
    """Screen every line of the memory file and its mirrors; exit 1 on any finding.

    The mirrors are CLAUDE.md, GEMINI.md, .cursorrules and .github/copilot-instructions.md,
    where they exist. Each finding is one line: path:line: rule: reason.
    """
    app: App = ctx.obj
    root = app.root()
    settings = app.settings(root)
    findings = audit(root, settings)
    for finding in findings:
        click.echo(str(finding))
    if findings:
        ctx.exit(1)
    present = [
        name
        for name in dict.fromkeys((settings.memory_file.as_posix(), *MIRRORS))
        if (root / name).is_file()
    ]
    click.echo(f"no findings in {', '.join(present)}" if present else "no memory file to audit")
