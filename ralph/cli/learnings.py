"""``ralph learnings``: list the newest learnings, review pending ones, compact the file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import click

from ralph.memory.learnings import accept_with_commit, compact, pending, recent, reject
from ralph.runtime.lock import RepoLock
from ralph.settings import Settings
from ralph.vcs import repo


class App(Protocol):
    """What the ``ralph`` group puts in ``ctx.obj`` (ralph.cli.Context)."""

    def root(self) -> Path: ...

    def settings(self, root: Path, **flags: Any) -> Settings: ...


def _noun(count: int) -> str:
    return f"{count} learning" if count == 1 else f"{count} learnings"


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
    """List the newest learnings with their task and commit; review and compact them."""
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    root = app.root()
    settings = app.settings(root)
    rows = recent(root, settings, limit)
    if not rows:
        click.echo(f"no learnings in {settings.memory_file} yet")
    width = max((len(learning.task_id) for learning, _ in rows), default=0)
    for learning, sha in rows:
        commit = sha[:12] if sha else "uncommitted"
        click.echo(f"{learning.day}  {learning.task_id:<{width}}  {commit:<12}  {learning.text}")
    waiting = len(pending(root))
    if waiting:
        click.echo(f"{_noun(waiting)} waiting for review: `ralph learnings pending`")


@learnings_group.command("pending")
@click.pass_obj
def pending_command(app: App) -> None:
    """Number the learnings waiting for review."""
    waiting = pending(app.root())
    if not waiting:
        click.echo("no learnings waiting for review")
    for number, learning in enumerate(waiting, start=1):
        click.echo(f"{number:>3}. [{learning.task_id} · {learning.day}] {learning.text}")


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
