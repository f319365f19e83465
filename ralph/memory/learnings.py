"""What happens to learnings around the memory file: screening, review, compaction,
provenance, reverts, audits, commits.

ralph.memory.file owns the format of AGENTS.md and ralph.memory.screen decides whether a
learning informs or instructs; this module decides where a learning goes (straight into the
memory file, or to ``.ralph/learnings-pending.md`` for a person, always when the screen held
it back), merges and archives old ones, commits what it changes, and holds what the
``ralph learnings`` commands do.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

from ralph.errors import RalphError, RepositoryError
from ralph.memory import file as memory
from ralph.memory.file import Learning
from ralph.memory.screen import Finding, finding_named, screen
from ralph.runtime.atomic import write_atomic
from ralph.settings import Settings
from ralph.vcs import repo

PENDING_FILE = Path(repo.STATE_DIR) / "learnings-pending.md"
PENDING_INTRO = (
    "# Learnings waiting for review\n\n"
    "List them with `ralph learnings pending`; keep them with `ralph learnings accept [N...]`,\n"
    "drop them with `ralph learnings reject [N...]`. A learning marked `held back` was stopped\n"
    "by the screen (docs/memory.md); accepting it overrides the screen.\n"
)
COMPACT_TRAILER = "compact"
REVIEW_TRAILER = "review"
REVERT_TRAILER = "revert"
# Files other tools load into an agent's context the way agents load AGENTS.md.
MIRRORS = ("CLAUDE.md", "GEMINI.md", ".cursorrules", ".github/copilot-instructions.md")
# An audit reads this much of each file; a memory file is text for a prompt, not a data set.
MAX_AUDITED_BYTES = 8 * 1024 * 1024
_MAX_COMMAND_CHARS = 120
# The line under a pending entry that says why the screen held it back.
_HELD_BACK = re.compile(r"\s+held back \((?P<rule>[a-z-]+)\)")
# Workers record learnings from threads of their own; the pending file is read, merged and
# written whole, so one writer at a time.
_PENDING_WRITE = threading.Lock()


class UnknownLearning(RalphError):
    """A pending learning number that is not in the list (exit 1)."""


@dataclass(frozen=True)
class Pending:
    """A learning waiting for a person."""

    learning: Learning
    finding: Finding | None
    """Why the screen held it back; None: it waits because ``learnings = "review"``."""


@dataclass(frozen=True)
class Provenance:
    """Where an entry of the memory file came from, as git history tells it."""

    learning: Learning
    commit: str | None
    """The commit that last wrote the entry's line; None: not committed yet."""
    attempt: str | None
    agent: str | None
    model: str | None
    """From the commit's ``Ralph-Attempt``, ``Ralph-Agent`` and ``Ralph-Model`` trailers."""
    kind: str | None
    """The commit's ``Ralph-Learnings`` trailer: ``review`` (a person accepted it),
    ``compact``, or the task id of a commit holding learnings alone."""


@dataclass(frozen=True)
class RevertResult:
    """What ``revert`` removed, and its commit (None when there was nothing to remove)."""

    removed: tuple[Learning, ...]
    commit: str | None


@dataclass(frozen=True)
class AuditFinding:
    """A line of the memory file, or of a mirror, that the screen would not let in."""

    path: str
    """Relative to the repository root."""
    line: int
    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.reason}"


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


def screened(texts: Iterable[str]) -> tuple[list[str], list[tuple[str, Finding]]]:
    """Split an attempt's learnings into those that may go into the memory file and those the
    screen holds back, each cleaned (memory.clean_learning), in order; empty ones are dropped.

    Pass them as the agent wrote them (memory.read_raw_learnings): the screen then also sees
    the invisible characters cleaning removes. Cleaned texts work too, seeing a little less.
    """
    accepted: list[str] = []
    held: list[tuple[str, Finding]] = []
    for text in texts:
        cleaned = memory.clean_learning(text)
        if not memory.normalise(cleaned):
            continue
        finding = screen(text) or screen(cleaned)
        if finding is None:
            accepted.append(cleaned)
        else:
            held.append((cleaned, finding))
    return accepted, held


def take_learnings(
    root: Path, settings: Settings, learnings_file: Path, task_id: str, day: str
) -> list[str]:
    """What an attempt's learnings file offers that may go on (cleaned, at most
    ``max_learnings_per_attempt``); those the screen holds back are quarantined on the way.

    The one call the engine needs where it reads an agent's learnings: the texts it returns
    go where learnings always went (the memory file in ``auto`` mode, to_review in
    ``review`` mode); the rest wait in the pending file for a person.
    """
    raw = memory.read_raw_learnings(learnings_file, limit=settings.max_learnings_per_attempt)
    accepted, held = screened(raw)
    quarantine(root, settings, held, task_id, day)
    return accepted


def record(
    root: Path, settings: Settings, texts: list[str], task_id: str, day: str
) -> list[Learning]:
    """Keep what an attempt learned in the tree at ``root``; return the entries it changed.

    At most ``max_learnings_per_attempt`` are taken. What the screen holds back goes to the
    pending file (quarantine) in either mode. ``learnings = "auto"``: the rest go into the
    memory file (not staged, not committed); a non-empty result means the memory file needs
    committing. ``"review"``: the rest go to the pending file too (to_review), and ``[]`` is
    returned.
    """
    memory.check_label(task_id, day)
    if settings.learnings == "review":
        to_review(root, settings, texts, task_id, day)
        return []
    accepted, held = screened(_first(texts, settings.max_learnings_per_attempt))
    quarantine(root, settings, held, task_id, day)
    return memory.add_learnings(root / settings.memory_file, accepted, task_id, day)


def to_review(root: Path, settings: Settings, texts: list[str], task_id: str, day: str) -> None:
    """Put what an attempt learned in the pending file, to wait for ``ralph learnings accept``;
    those the screen holds back are marked with its finding.

    At most ``max_learnings_per_attempt`` texts are taken. Raises ValueError for a task id or
    day that cannot label an entry.
    """
    memory.check_label(task_id, day)
    accepted, held = screened(_first(texts, settings.max_learnings_per_attempt))
    waiting = [(text, None) for text in accepted]
    _add_pending(root, [*waiting, *held], task_id, day)


def quarantine(
    root: Path,
    settings: Settings,
    items: Sequence[tuple[str, Finding]],
    task_id: str,
    day: str,
) -> None:
    """Put learnings the screen held back (screened's second list) in the pending file with
    their findings, whatever ``learnings`` says: none reaches the memory file, or a prompt,
    until a person accepts it. At most ``max_learnings_per_attempt`` are taken. Raises
    ValueError for a task id or day that cannot label an entry.
    """
    memory.check_label(task_id, day)
    limit = max(settings.max_learnings_per_attempt, 0)
    _add_pending(root, list(items)[:limit], task_id, day)


def pending(root: Path) -> list[Learning]:
    """The learnings waiting for review, in order; number N in the commands is index N-1."""
    return [item.learning for item in pending_review(root)]


def pending_review(root: Path) -> list[Pending]:
    """The learnings waiting for review with the screen's findings, in order; number N in
    the commands is index N-1.

    Each is cleaned and screened again on the way out: the file lives in ``.ralph/``, where
    an agent can write, and what it holds reaches a terminal and the memory file. A finding
    recorded when it was held back is kept (it may have seen characters cleaning removed).
    """
    waiting: list[Pending] = []
    for line in memory.section_lines(pending_path(root)):
        held = _HELD_BACK.match(line)
        if held is not None and waiting and waiting[-1].finding is None:
            waiting[-1] = replace(waiting[-1], finding=finding_named(held["rule"]))
            continue
        entry = memory.parse_entry(line)
        if entry is None or not entry.task_id.isprintable():
            continue
        text = memory.clean_learning(entry.text)
        if memory.normalise(text):
            waiting.append(Pending(replace(entry, text=text), None))
    return [
        item if item.finding is not None else replace(item, finding=screen(item.learning.text))
        for item in waiting
    ]


def pending_count(root: Path) -> int:
    """How many learnings wait for a person (for ``ralph status`` and notifications)."""
    return len(pending_review(root))


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
    with _PENDING_WRITE:
        waiting = pending_review(root)
        chosen = _select(waiting, numbers)
        _write_pending(root, [item for i, item in enumerate(waiting) if i not in chosen])
    return [waiting[i].learning for i in sorted(chosen)]


def revert(root: Path, settings: Settings, task_id: str) -> RevertResult:
    """Remove every entry labelled ``task_id`` from the memory file, in one commit.

    The commit, subject ``Revert learnings of task <id>`` and trailer
    ``Ralph-Learnings: revert``, holds only the memory file; nothing labelled ``task_id``
    means no commit. An entry a later task relabelled (it learned the same lesson) carries
    that task's id and stays. Raises RepositoryError when the memory file has uncommitted
    changes or other changes are staged (and CommitRejected, with the file put back, if a
    hook refuses).
    """
    memory_file = settings.memory_file.as_posix()
    _require_committable(root, [memory_file])
    originals = {memory_file: _read(root / memory_file)}
    removed = memory.remove_learnings(root / memory_file, task_id)
    if not removed:
        return RevertResult((), None)
    subject = f"Revert learnings of task {task_id}"  # it labelled entries: one word
    sha = _commit(root, settings, originals, subject, REVERT_TRAILER)
    return RevertResult(tuple(removed), sha)


def audit(root: Path, settings: Settings) -> list[AuditFinding]:
    """Run the screen over every line of the memory file and of the mirrors that exist
    (MIRRORS: CLAUDE.md, GEMINI.md, .cursorrules, .github/copilot-instructions.md), people's
    text included. A mirror that is a link to a file already read is read once.
    """
    findings: list[AuditFinding] = []
    read: set[Path] = set()
    for relative in dict.fromkeys((settings.memory_file.as_posix(), *MIRRORS)):
        path = root / relative
        if not path.is_file() or path.resolve() in read:
            continue
        read.add(path.resolve())
        with path.open("rb") as handle:
            text = handle.read(MAX_AUDITED_BYTES).decode("utf-8", errors="replace")
        for number, line in memory.screened_lines(text):
            found = screen(line)
            if found is not None:
                findings.append(AuditFinding(relative, number, found.rule, found.reason))
    return findings


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


def provenance(root: Path, settings: Settings, limit: int) -> list[Provenance]:
    """recent, with what each entry's commit says about where it came from: its attempt,
    agent and model (trailers of a task commit) or the kind of learnings commit."""
    rows = recent(root, settings, limit)
    trailers = repo.trailers_of(root, [sha for _, sha in rows if sha])
    found = []
    for learning, sha in rows:
        said = trailers.get(sha, {}) if sha else {}
        found.append(
            Provenance(
                learning,
                sha,
                attempt=said.get("Ralph-Attempt"),
                agent=said.get("Ralph-Agent"),
                model=said.get("Ralph-Model"),
                kind=said.get(repo.LEARNINGS_TRAILER),
            )
        )
    return found


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
    """accept, also returning the commit (None when the memory file already held them).

    A person accepting a learning the screen held back overrides the screen: it is merged
    like any other."""
    with _PENDING_WRITE:
        waiting = pending_review(root)
        chosen = _select(waiting, numbers)
        if not chosen:
            return [], None
        memory_file = settings.memory_file.as_posix()
        _require_committable(root, [memory_file])
        originals = {memory_file: _read(root / memory_file)}
        accepted = [waiting[i].learning for i in sorted(chosen)]
        changed = memory.merge_learnings(root / memory_file, accepted)
        sha = None
        if changed:
            noun = "learning" if len(changed) == 1 else "learnings"
            subject = f"Accept {len(changed)} {noun}"
            sha = _commit(root, settings, originals, subject, REVIEW_TRAILER)
        # Only after the commit: a refused or interrupted one leaves them waiting, to try again.
        _write_pending(root, [item for i, item in enumerate(waiting) if i not in chosen])
    return accepted, sha


def _first(texts: Iterable[str], limit: int) -> list[str]:
    """The first ``limit`` texts that are not empty once cleaned."""
    kept: list[str] = []
    for text in texts:
        if len(kept) >= limit:
            break
        if memory.normalise(memory.clean_learning(text)):
            kept.append(text)
    return kept


def _add_pending(
    root: Path, items: Sequence[tuple[str, Finding | None]], task_id: str, day: str
) -> None:
    """Merge cleaned ``items`` into the pending list: a repeat of a waiting learning (same
    lesson) takes its place, with the newer label unless it is older, and keeps a finding
    either one had."""
    if not items:
        return
    with _PENDING_WRITE:
        waiting = pending_review(root)
        for text, finding in items:
            new = Pending(Learning(text, task_id, day), finding)
            for index, old in enumerate(waiting):
                if memory.same_lesson(old.learning.text, text):
                    waiting[index] = _repeated(old, new)
                    break
            else:
                waiting.append(new)
        _write_pending(root, waiting)


def _repeated(old: Pending, new: Pending) -> Pending:
    learning = old.learning
    if new.learning.day >= learning.day:
        learning = replace(learning, task_id=new.learning.task_id, day=new.learning.day)
    return Pending(learning, old.finding or new.finding)


def _select(waiting: Sequence[object], numbers: list[int] | None) -> set[int]:
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


def _write_pending(root: Path, items: list[Pending]) -> None:
    path = pending_path(root)
    if not items:
        path.unlink(missing_ok=True)
        return
    lines = []
    for item in items:
        lines.append(f"{item.learning.as_line()}\n")
        if item.finding is not None:
            lines.append(f"  held back ({item.finding.rule}): {item.finding.reason}\n")
    write_atomic(path, f"{PENDING_INTRO}\n{memory.LEARNINGS_HEADING}\n\n{''.join(lines)}")


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
