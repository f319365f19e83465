"""What happens to learnings around the memory file: review, compaction, listing, commits.

ralph.memory owns the format of AGENTS.md; this module decides where a learning goes
(straight into the memory file, or to ``.ralph/learnings-pending.md`` for review), merges
and archives old ones, commits what it changes, and holds the ``ralph learnings`` commands.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

from ralph.errors import RalphError, RepositoryError
from ralph.memory import file as memory
from ralph.memory.file import Learning
from ralph.runtime.atomic import write_atomic
from ralph.settings import Settings
from ralph.vcs import repo

PENDING_FILE = Path(repo.STATE_DIR) / "learnings-pending.md"
PENDING_INTRO = (
    "# Learnings waiting for review\n\n"
    "List them with `ralph learnings pending`; keep them with `ralph learnings accept [N...]`,\n"
    "drop them with `ralph learnings reject [N...]`.\n"
)
COMPACT_TRAILER = "compact"
REVIEW_TRAILER = "review"
_MAX_COMMAND_CHARS = 120


class UnknownLearning(RalphError):
    """A pending learning number that is not in the list (exit 1)."""


@dataclass(frozen=True)
class CompactResult:
    """What compaction did."""

    merged: int
    """Entries dropped because an earlier one holds the same lesson."""
    archived: int
    """Entries moved to the archive for being older than ``learnings_retention``."""
    commit: str | None
    """The compaction's commit; None when there was nothing to do."""


def pending_path(root: Path) -> Path:
    """Where learnings wait for review when ``learnings = "review"``."""
    return root / PENDING_FILE


def record(
    root: Path, settings: Settings, texts: list[str], task_id: str, day: str
) -> list[Learning]:
    """Keep what an attempt learned in the tree at ``root``; return the entries it changed.

    ``learnings = "auto"``: into the memory file (not staged, not committed); a non-empty
    result means the memory file needs committing. ``"review"``: to the pending file
    (to_review), and ``[]`` is returned. At most ``max_learnings_per_attempt`` are taken.
    """
    memory.check_label(task_id, day)
    if settings.learnings == "review":
        to_review(root, settings, texts, task_id, day)
        return []
    limit = settings.max_learnings_per_attempt
    return memory.add_learnings(root / settings.memory_file, texts, task_id, day, limit=limit)


def to_review(root: Path, settings: Settings, texts: list[str], task_id: str, day: str) -> None:
    """Put what an attempt learned in the pending file, to wait for ``ralph learnings accept``.

    At most ``max_learnings_per_attempt`` texts are taken. Raises ValueError for a task id or
    day that cannot label an entry.
    """
    memory.check_label(task_id, day)
    limit = settings.max_learnings_per_attempt
    path = pending_path(root)
    if texts and limit > 0 and not path.exists():
        write_atomic(path, PENDING_INTRO)
    memory.add_learnings(path, texts, task_id, day, limit=limit)


def pending(root: Path) -> list[Learning]:
    """The learnings waiting for review, in order; number N in the commands is index N-1.

    Each is cleaned again on the way out: the file lives in ``.ralph/``, where an agent can
    write, and what it holds reaches a terminal and the memory file.
    """
    waiting = []
    for learning in memory.existing_learnings(pending_path(root)):
        text = memory.clean_learning(learning.text)
        if memory.normalise(text) and learning.task_id.isprintable():
            waiting.append(replace(learning, text=text))
    return waiting


def accept(root: Path, settings: Settings, numbers: list[int] | None) -> list[Learning]:
    """Move pending learnings ``numbers`` (None: all) into the memory file in one commit.

    The commit, subject ``Accept N learnings`` and trailer ``Ralph-Learnings: review``, holds
    only the memory file; there is none when the memory file already held them all. Returns
    the accepted learnings as they were pending. Raises UnknownLearning for a number not in
    the list, RepositoryError when the memory file has uncommitted changes or other changes
    are staged (and CommitRejected, with the memory file put back, if a hook refuses).
    """
    return accept_with_commit(root, settings, numbers)[0]


def reject(root: Path, numbers: list[int] | None) -> list[Learning]:
    """Drop pending learnings ``numbers`` (None: all) and return them; nothing is committed."""
    waiting = pending(root)
    chosen = _select(waiting, numbers)
    _write_pending(root, [learning for i, learning in enumerate(waiting) if i not in chosen])
    return [waiting[i] for i in sorted(chosen)]


def compact(root: Path, settings: Settings, today: date) -> CompactResult:
    """Merge repeated lessons and archive old entries of the memory file, in one commit.

    Entries dated more than ``learnings_retention`` before ``today`` move to
    ``learnings_archive``. The commit, subject ``Compact learnings: N merged, M archived`` and
    trailer ``Ralph-Learnings: compact``, holds the memory file and the archive; nothing to do
    means no commit. Raises RepositoryError when either file has uncommitted changes or other
    changes are staged (and CommitRejected, with both files put back, if a hook refuses).
    """
    memory_file = settings.memory_file.as_posix()
    archive = settings.learnings_archive.as_posix()
    _require_committable(root, [memory_file, archive])
    originals = {path: _read(root / path) for path in (memory_file, archive)}
    try:
        cutoff = today - timedelta(seconds=settings.learnings_retention)
    except OverflowError:  # a retention longer than the calendar: nothing is old
        cutoff = date.min
    done = memory.compact_learnings(root / memory_file, root / archive, cutoff)
    if not done.merged and not done.archived:
        return CompactResult(0, 0, None)
    if not done.archived:
        del originals[archive]
    subject = f"Compact learnings: {done.merged} merged, {len(done.archived)} archived"
    sha = _commit(root, settings, originals, subject, COMPACT_TRAILER)
    return CompactResult(done.merged, len(done.archived), sha)


def recent(root: Path, settings: Settings, limit: int) -> list[tuple[Learning, str | None]]:
    """The ``limit`` newest entries of the memory file, each with the commit that wrote its line.

    Newest means latest day, then lowest in the file. The commit comes from one bounded
    ``git blame`` of just those lines; None when the line is not committed yet.
    """
    located = memory.located_learnings(root / settings.memory_file)
    newest = sorted(located, key=lambda item: (item[1].day, item[0]), reverse=True)
    newest = newest[: max(limit, 0)]
    commits = _line_commits(root, settings.memory_file.as_posix(), [line for line, _ in newest])
    return [(learning, commits.get(line)) for line, learning in newest]


def failure_lesson(
    task_id: str, check_command: str | None, failures: int, attempts: int
) -> str | None:
    """One factual line about a task that used up its attempts, or None when all it could
    say is that the task failed (that is in ``ralph status``; it isn't worth a commit).

    ``failure_lesson("add-auth", "pytest -q", 3, 3)`` gives
    "Task add-auth failed 3 attempts; check `pytest -q` failed in 3 of them."
    """
    if not (check_command and check_command.strip() and failures > 0):
        return None
    lesson = f"Task {task_id} failed {attempts} attempt{'' if attempts == 1 else 's'}"
    lesson += f"; check {_inline_code(check_command)} failed"
    if attempts > 1:
        lesson += f" in {failures} of them"
    return lesson + "."


def accept_with_commit(
    root: Path, settings: Settings, numbers: list[int] | None
) -> tuple[list[Learning], str | None]:
    """accept, also returning the commit (None when the memory file already held them)."""
    waiting = pending(root)
    chosen = _select(waiting, numbers)
    if not chosen:
        return [], None
    memory_file = settings.memory_file.as_posix()
    _require_committable(root, [memory_file])
    originals = {memory_file: _read(root / memory_file)}
    accepted = [waiting[i] for i in sorted(chosen)]
    changed = memory.merge_learnings(root / memory_file, accepted)
    sha = None
    if changed:
        noun = "learning" if len(changed) == 1 else "learnings"
        sha = _commit(root, settings, originals, f"Accept {len(changed)} {noun}", REVIEW_TRAILER)
    # Only after the commit: a refused or interrupted one leaves them waiting, to try again.
    _write_pending(root, [learning for i, learning in enumerate(waiting) if i not in chosen])
    return accepted, sha


def _select(waiting: list[Learning], numbers: list[int] | None) -> set[int]:
    """Indexes for the 1-based ``numbers`` (None: all); UnknownLearning for one not listed."""
    if numbers is None:
        return set(range(len(waiting)))
    unknown = sorted({n for n in numbers if not 1 <= n <= len(waiting)})
    if unknown:
        listed = ", ".join(map(str, unknown))
        there = f"there are {len(waiting)}" if waiting else "none are waiting"
        raise UnknownLearning(
            f"no pending learning {listed} ({there}; see `ralph learnings pending`)"
        )
    return {n - 1 for n in numbers}


def _write_pending(root: Path, learnings: list[Learning]) -> None:
    path = pending_path(root)
    if not learnings:
        path.unlink(missing_ok=True)
        return
    entries = "".join(f"{learning.as_line()}\n" for learning in learnings)
    write_atomic(path, f"{PENDING_INTRO}\n{memory.LEARNINGS_HEADING}\n\n{entries}")


def _require_committable(root: Path, paths: list[str]) -> None:
    """Refuse to commit over a person's uncommitted edits or changes they staged."""
    dirty = [path for path in paths if repo.dirty_paths(root, under=path)]
    if dirty:
        raise RepositoryError(
            f"{', '.join(dirty)} has uncommitted changes; commit or discard them first"
        )
    others = sorted(set(repo.staged_paths(root)) - set(paths))
    if others:
        raise RepositoryError(
            f"changes are staged ({', '.join(others[:3])}); commit or unstage them first, "
            "so ralph's commit holds only the learnings"
        )


def _commit(
    root: Path, settings: Settings, originals: dict[str, bytes | None], subject: str, kind: str
) -> str:
    """Commit exactly ``originals``' paths; if git refuses, put them back as they were."""
    paths = list(originals)
    repo.stage_paths(root, paths)
    message = repo.task_message(subject, {repo.LEARNINGS_TRAILER: kind})
    try:
        return repo.commit(root, message, run_hooks=settings.run_hooks)
    except repo.CommitRejected:
        for path, data in originals.items():
            if data is None:
                (root / path).unlink(missing_ok=True)
            else:
                write_atomic(root / path, data)
        repo.stage_paths(root, paths)  # back to what HEAD holds: the paths were clean
        raise


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _line_commits(root: Path, path: str, lines: list[int]) -> dict[int, str]:
    """The commit that last wrote each of ``lines`` (1-based) of ``path``; uncommitted: absent."""
    return repo.line_commits(root, path, lines)


def _inline_code(command: str) -> str:
    command = " ".join(command.split())
    if len(command) > _MAX_COMMAND_CHARS:
        command = command[: _MAX_COMMAND_CHARS - 1] + "…"
    fence = "``" if "`" in command else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{command}{pad}{fence}"
