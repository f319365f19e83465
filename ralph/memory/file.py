"""The memory file (AGENTS.md) and the learnings agents leave behind in it.

Agents write learnings as markdown bullets to a scratch file; ralph cleans them and appends
them under ``## Learnings`` as ``- [<task_id> · <day>] <text>``. A learning the section already
holds, even reworded, refreshes that entry's label instead of adding a line. Everything outside
that section belongs to people and is kept byte for byte. This module owns the file format;
ralph.learnings owns the workflow around it (review, compaction, commits).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from ralph.runtime.atomic import write_atomic

MAX_LEARNING_CHARS = 400
MAX_LEARNINGS_PER_FILE = 20
LEARNINGS_HEADING = "## Learnings"
ARCHIVE_HEADING = "## Archived learnings"
ARCHIVE_INTRO = (
    "# Learnings archive\n\n"
    "Learnings that `ralph learnings compact` moved out of the memory file once they were older\n"
    "than `learnings_retention`. Agents do not read this file.\n"
)
# Two learnings are one lesson when their content words overlap this much (Jaccard index)...
SIMILAR_WORDS = 0.8
# ...and each has at least this many: below it, a word or two decides, and only an equal
# normalise() key counts.
MIN_SIMILAR_WORDS = 4

# An agent can write anything, so a bound keeps a runaway file from costing memory and time.
_MAX_LEARNINGS_FILE_BYTES = 1024 * 1024

_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]"  # any other escape sequence
)
_LEADING_MARKS = re.compile(r"^(?:(?:#+|[-*+](?= |$)|\d{1,9}[.)](?= |$)) ?)+")
_BULLET = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:\s+|$)")
_HEADING_LINE = re.compile(r"#{1,6}(?:\s|$)")
_SECTION_END = re.compile(r"#{1,2}(?:[ \t]|\r?\n|$)")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_TASK_ID = re.compile(r"[^\s\[\]·]+")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_ENTRY = re.compile(r"- \[(?P<task_id>[^\s\[\]·]+) · (?P<day>\d{4}-\d{2}-\d{2})\] (?P<text>.*\S)")
# Zero-width joiners hold emoji together; every other format character is invisible text that
# could hide instructions from the people who review AGENTS.md.
_KEPT_FORMAT_CHARS = frozenset("\u200d")
_WORD = re.compile(r"[^\W_]+")
# Words too common to tell lessons apart or to tie a learning to a task. Negations are not
# here: "use uv" and "never use uv" must stay different lessons.
# fmt: off
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "by", "can", "for", "from", "has",
    "have", "in", "into", "is", "it", "its", "of", "on", "or", "so", "than", "that", "the",
    "then", "there", "these", "this", "those", "to", "was", "were", "when", "which", "will",
    "with", "you", "your",
})
# fmt: on


@dataclass(frozen=True)
class Learning:
    """One learning as it stands in the memory file."""

    text: str
    """Cleaned text, a single line."""
    task_id: str
    day: str
    """ISO date, e.g. ``2026-11-23``."""

    def as_line(self) -> str:
        """The entry as the memory file holds it, without the newline."""
        return f"- [{self.task_id} · {self.day}] {self.text}"


@dataclass(frozen=True)
class Compaction:
    """What compact_learnings did to the memory file."""

    merged: int
    """Entries dropped because an earlier entry holds the same lesson."""
    archived: tuple[Learning, ...]
    """Entries moved to the archive, oldest first as they stood in the file."""


@dataclass(frozen=True)
class _Lesson:
    """What two learnings are compared by: their normalise() key and their content words."""

    key: str
    words: frozenset[str]

    @classmethod
    def of(cls, text: str) -> _Lesson:
        return cls(normalise(text), content_words(text))

    def likeness(self, other: _Lesson) -> float:
        if self.key == other.key:
            return 1.0
        if min(len(self.words), len(other.words)) < MIN_SIMILAR_WORDS:
            return 0.0
        return len(self.words & other.words) / len(self.words | other.words)


@dataclass(eq=False)
class _Slot:
    """A line of the Learnings section while it is being edited (compared by identity)."""

    lesson: _Lesson
    entry: Learning | None
    """None: a line a person wrote, which ralph never rewrites."""
    line: int | None
    """Index into the file's lines; None: not in the file yet."""


@dataclass(frozen=True)
class _Layout:
    """A memory file cut into lines (each keeps its newline) around the Learnings section."""

    lines: tuple[str, ...]
    heading: int | None
    end: int

    def section(self) -> tuple[str, ...]:
        return () if self.heading is None else self.lines[self.heading + 1 : self.end]


def read_learnings_file(path: Path, limit: int = MAX_LEARNINGS_PER_FILE) -> list[str]:
    """Parse the markdown bullets an agent wrote to its learnings file into cleaned learnings.

    A missing or unreadable file gives ``[]``. Bullets start with ``-``, ``*``, ``+`` or
    ``1.``; indented lines join their bullet; any other paragraph is one learning; headings are
    titles, not learnings, and are dropped. Empty and repeated learnings are dropped and at most
    ``limit`` are returned, first ones first.
    """
    return [clean_learning(item) for item in read_raw_learnings(path, limit)]


def read_raw_learnings(path: Path, limit: int = MAX_LEARNINGS_PER_FILE) -> list[str]:
    """read_learnings_file, but each learning as the agent wrote it (bullet marks and line
    breaks aside), not yet cleaned: for the screen (ralph.memory.screen), which must see the
    invisible and control characters that cleaning removes. Which learnings are taken, and
    how many, is the same; clean_learning on each gives read_learnings_file's result.
    """
    # is_file keeps a FIFO or device at the path from blocking or flooding the read.
    if limit <= 0 or not path.is_file():
        return []
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_LEARNINGS_FILE_BYTES)
    except OSError:
        return []
    learnings: list[str] = []
    seen: set[str] = set()
    for item in _split_items(raw.decode("utf-8-sig", errors="replace")):
        key = normalise(clean_learning(item))
        if key and key not in seen:
            seen.add(key)
            learnings.append(item)
            if len(learnings) == limit:
                break
    return learnings


def clean_learning(text: str) -> str:
    """Make ``text`` one safe line for the memory file.

    Escape sequences and invisible characters go, whitespace folds to single spaces, leading
    heading and bullet marks go (so it can never open a section), HTML comment markers are
    neutralised and the result is capped to MAX_LEARNING_CHARS, ending with ``…`` if cut.
    """
    text = _ANSI.sub("", text)
    text = "".join(char for char in text if _visible(char))
    text = " ".join(text.split())
    text = _LEADING_MARKS.sub("", text, count=1)
    # A stray '<!--' would hide the rest of AGENTS.md wherever the markdown is rendered.
    text = text.replace("<!--", "<!\u2010\u2010").replace("-->", "\u2010\u2010>")
    if len(text) <= MAX_LEARNING_CHARS:
        return text
    cut = text[: MAX_LEARNING_CHARS - 1]
    space = cut.rfind(" ")
    if space >= MAX_LEARNING_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def normalise(text: str) -> str:
    """Key for de-duplication: lower case, punctuation removed, whitespace folded."""
    text = unicodedata.normalize("NFKC", text).casefold()
    # Backticks are modifier symbols (Sk) to Unicode but punctuation in markdown.
    kept = (char for char in text if not unicodedata.category(char).startswith(("P", "Sk")))
    return " ".join("".join(kept).split())


def content_words(text: str) -> frozenset[str]:
    """The words that carry a learning's meaning: case folded, no punctuation, no stopwords."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
    return frozenset(word for word in words if word not in _STOPWORDS)


def same_lesson(first: str, second: str) -> bool:
    """Whether two learnings say the same thing: equal normalise() keys, or, when both have
    at least MIN_SIMILAR_WORDS content words, word sets overlapping by SIMILAR_WORDS or more."""
    return _Lesson.of(first).likeness(_Lesson.of(second)) >= SIMILAR_WORDS


def existing_learnings(memory_path: Path) -> list[Learning]:
    """The entries under the Learnings heading, in file order (missing file: [])."""
    return [learning for _, learning in located_learnings(memory_path)]


def located_learnings(memory_path: Path) -> list[tuple[int, Learning]]:
    """The entries under the Learnings heading with their 1-based line numbers."""
    try:
        text = memory_path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    layout = _layout(text)
    if layout.heading is None:
        return []
    located = []
    for index in range(layout.heading + 1, layout.end):
        entry = _parse_entry(layout.lines[index])
        if entry is not None:
            located.append((index + 1, entry))
    return located


def section_lines(path: Path) -> list[str]:
    """The lines under the Learnings heading of ``path``, without line endings (missing: [])."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line.rstrip("\r\n") for line in _layout(text).section()]


def parse_entry(line: str) -> Learning | None:
    """The entry a line of the Learnings section holds, or None for a line a person wrote."""
    return _parse_entry(line)


def screened_lines(text: str) -> list[tuple[int, str]]:
    """What of each non-blank line of a memory file the screen should read, with its 1-based
    number: an entry's text without ralph's label (its label is ralph's own format, not
    something a rule should see as forged), a heading without its marks, any other line whole.
    """
    layout = _layout(text)
    lines = []
    for index, line in enumerate(layout.lines):
        bare = line.rstrip("\r\n")
        if not bare.strip():
            continue
        inside = layout.heading is not None and layout.heading < index < layout.end
        entry = _parse_entry(bare) if inside else None
        if entry is not None:
            bare = entry.text
        elif _HEADING_LINE.match(bare):
            bare = bare.lstrip("#").strip()
        lines.append((index + 1, bare))
    return lines


def remove_learnings(memory_path: Path, task_id: str) -> list[Learning]:
    """Remove the entries labelled ``task_id`` from the Learnings section; return them.

    Lines people wrote stay, and so does everything outside the section; blank lines left
    behind in the section fold into one. Nothing labelled ``task_id``: the file is untouched.
    """
    raw = _read_or_empty(memory_path)
    layout = _layout(raw.decode("utf-8", errors="surrogateescape"))
    if layout.heading is None:
        return []
    removed: list[Learning] = []
    kept: list[str] = []
    for line in layout.section():
        entry = _parse_entry(line)
        if entry is not None and entry.task_id == task_id:
            removed.append(entry)
        else:
            kept.append(line)
    if not removed:
        return []
    lines = layout.lines
    updated = (*lines[: layout.heading + 1], *_fold_blank_runs(kept), *lines[layout.end :])
    write_atomic(memory_path, "".join(updated).encode("utf-8", errors="surrogateescape"))
    return removed


def add_learnings(
    memory_path: Path, texts: list[str], task_id: str, day: str, *, limit: int | None = None
) -> list[Learning]:
    """Record ``texts`` as learnings of ``task_id`` on ``day``; return the entries changed.

    Texts are cleaned first and at most ``limit`` non-empty ones are taken (None: all). Then
    merge_learnings: new lessons are appended, known ones refresh their entry's label.
    Raises ValueError for a task id or day that would break the entry format.
    """
    check_label(task_id, day)
    cleaned = [text for text in map(clean_learning, texts) if normalise(text)]
    if limit is not None:
        cleaned = cleaned[: max(limit, 0)]
    return merge_learnings(memory_path, [Learning(text, task_id, day) for text in cleaned])


def check_label(task_id: str, day: str) -> None:
    """Raise ValueError unless ``task_id`` and ``day`` can label an entry and be read back."""
    if not _TASK_ID.fullmatch(task_id):
        raise ValueError(f"task id {task_id!r} cannot label a learning")
    if not _DAY.fullmatch(day):
        raise ValueError(f"day {day!r} is not an ISO date like 2026-11-23")


def merge_learnings(memory_path: Path, learnings: Sequence[Learning]) -> list[Learning]:
    """Put ``learnings`` (already clean) under the Learnings heading; return the entries changed.

    A learning that is the same lesson (same_lesson) as an entry, or as one before it in
    ``learnings``, takes that entry's place in the file: the entry keeps its text and position
    and gets the newer learning's task id and day. One that matches a line a person wrote is
    dropped. The rest are appended at the end of the section; the heading is appended to the
    file if missing, and content outside the section is kept byte for byte. Returned: the
    appended and the relabelled entries as they now stand. Nothing changed: the file is not
    rewritten (or created).
    """
    updated, changed = merged(_read_or_empty(memory_path), learnings)
    if updated is not None:
        write_atomic(memory_path, updated)
    return changed


def add_into(
    raw: bytes, texts: list[str], task_id: str, day: str, *, limit: int | None = None
) -> tuple[bytes | None, list[Learning]]:
    """add_learnings on a memory file's content: the new content (None: unchanged) and the
    entries changed."""
    check_label(task_id, day)
    cleaned = [text for text in map(clean_learning, texts) if normalise(text)]
    if limit is not None:
        cleaned = cleaned[: max(limit, 0)]
    return merged(raw, [Learning(text, task_id, day) for text in cleaned])


def merged(raw: bytes, learnings: Sequence[Learning]) -> tuple[bytes | None, list[Learning]]:
    """merge_learnings on a memory file's content: the new content (None: unchanged) and the
    entries changed."""
    # surrogateescape round-trips bytes that are not UTF-8, so people's text stays untouched.
    layout = _layout(raw.decode("utf-8", errors="surrogateescape"))
    slots = _slots(layout)
    known = _Lessons(slots)
    for slot in slots:
        known.add(slot)
    appended: list[_Slot] = []
    changed: list[_Slot] = []
    for learning in learnings:
        lesson = _Lesson.of(learning.text)
        if not lesson.key:
            continue
        match = known.find(lesson)
        if match is not None and _apart(match, learning):
            match = None
        if match is None:
            slot = _Slot(lesson, learning, None)
            known.add(slot)
            appended.append(slot)
            changed.append(slot)
        elif _relabel(match, learning) and match not in changed:
            changed.append(match)
    if not changed:
        return None, []
    lines = _relabelled_lines(layout, changed)
    entries = [f"{slot.entry.as_line()}\n" for slot in appended if slot.entry is not None]
    updated = _insert_entries(_Layout(lines, layout.heading, layout.end), entries)
    entries_changed = [slot.entry for slot in changed if slot.entry is not None]
    return updated.encode("utf-8", errors="surrogateescape"), entries_changed


def compact_learnings(memory_path: Path, archive_path: Path, before: date) -> Compaction:
    """Merge repeated lessons in the Learnings section and archive entries dated before ``before``.

    Of entries holding one lesson (same_lesson) the first stays, with the newest label among
    them; an entry repeating a line a person wrote goes. Then entries whose day is before
    ``before`` move to ``archive_path`` (archive_learnings). Lines people wrote stay; runs of
    blank lines in the section fold into one. Nothing to do: neither file is touched.
    """
    raw = _read_or_empty(memory_path)
    layout = _layout(raw.decode("utf-8", errors="surrogateescape"))
    slots = _slots(layout)
    known = _Lessons(slots)
    kept: list[_Slot] = []
    relabelled: list[_Slot] = []
    dropped: set[int] = set()
    for slot in slots:
        match = None if slot.entry is None else known.find(slot.lesson)
        if match is not None and slot.entry is not None and _apart(match, slot.entry):
            match = None
        if match is None:
            known.add(slot)
            kept.append(slot)
            continue
        assert slot.entry is not None and slot.line is not None
        dropped.add(slot.line)
        if _relabel(match, slot.entry) and match not in relabelled:
            relabelled.append(match)
    merged = len(dropped)
    old = [slot for slot in kept if slot.entry is not None and _before(slot.entry.day, before)]
    if not dropped and not old:
        return Compaction(0, ())
    dropped.update(slot.line for slot in old if slot.line is not None)
    archived = tuple(slot.entry for slot in old if slot.entry is not None)
    archive_learnings(archive_path, list(archived))
    lines = _relabelled_lines(layout, relabelled)
    assert layout.heading is not None  # there were entries, so there is a section
    section = [lines[i] for i in range(layout.heading + 1, layout.end) if i not in dropped]
    updated = (*lines[: layout.heading + 1], *_fold_blank_runs(section), *lines[layout.end :])
    write_atomic(memory_path, "".join(updated).encode("utf-8", errors="surrogateescape"))
    return Compaction(merged, archived)


def archive_learnings(archive_path: Path, learnings: list[Learning]) -> None:
    """Append ``learnings`` under ``## Archived learnings`` in ``archive_path``, as they were.

    A missing file is created with a short title; a missing heading is appended. An entry the
    archive already holds line for line is not added again, so a compaction cut short and run
    again archives nothing twice.
    """
    raw = _read_or_empty(archive_path)
    text = raw.decode("utf-8", errors="surrogateescape") if raw else ARCHIVE_INTRO
    layout = _layout(text, ARCHIVE_HEADING)
    present = {
        entry for entry in (_parse_entry(line) for line in layout.section()) if entry is not None
    }
    lines = [f"{learning.as_line()}\n" for learning in learnings if learning not in present]
    if not lines:
        return
    updated = _insert_entries(layout, list(dict.fromkeys(lines)), ARCHIVE_HEADING)
    write_atomic(archive_path, updated.encode("utf-8", errors="surrogateescape"))


def memory_for_prompt(memory_path: Path, budget: int, spec_text: str = "") -> str:
    """The memory file's text for a prompt, at most ``budget`` UTF-8 bytes (missing file: "").

    When the whole file does not fit, the part people wrote comes first, then the learnings
    that fit, chosen by the words they share with ``spec_text`` (most first) and then by
    recency, shown in file order after a line saying how many were left out. The file on disk
    is never changed.
    """
    try:
        text = memory_path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    if _size(text) <= budget:
        return text
    layout = _layout(text)
    if layout.heading is None:
        return _truncate(text, budget)
    before = "".join(layout.lines[: layout.heading])
    heading = _ended(layout.lines[layout.heading])
    items = [_ended(line) for line in layout.section() if line.strip()]
    after = "".join(layout.lines[layout.end :])
    parts = _Parts(before, heading, after, memory_path.name)
    return _fit_learnings(parts, items, content_words(spec_text), budget)


def _visible(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cf":
        return char in _KEPT_FORMAT_CHARS
    # Whitespace controls (newline, tab...) survive so that they fold into spaces, not vanish.
    return category not in ("Cc", "Cs") or char.isspace()


def _split_items(text: str) -> list[str]:
    """Cut a learnings file into raw learnings: one per bullet or paragraph."""
    items: list[list[str]] = []
    current: list[str] | None = None
    bullet_indent = -1  # -1: the current item is a paragraph, so nothing nests under it
    after_blank = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            after_blank = True
            continue
        indent = len(line) - len(line.lstrip())
        bullet = _BULLET.match(stripped)
        body = stripped[bullet.end() :] if bullet else stripped
        nested = bullet_indent >= 0 and indent > bullet_indent
        if _HEADING_LINE.match(stripped):
            current = None
        elif current is not None and (nested or not (after_blank or bullet)):
            current.append(body)
        else:
            current = [body]
            bullet_indent = indent if bullet else -1
            items.append(current)
        after_blank = False
    return [" ".join(item) for item in items]


def _layout(text: str, heading: str = LEARNINGS_HEADING) -> _Layout:
    lines = tuple(_LINE.findall(text))
    for at, line in enumerate(lines):
        if line.rstrip() == heading:
            ends = (i for i in range(at + 1, len(lines)) if _SECTION_END.match(lines[i]))
            return _Layout(lines, at, next(ends, len(lines)))
    return _Layout(lines, None, len(lines))


def _parse_entry(line: str) -> Learning | None:
    entry = _ENTRY.fullmatch(line.rstrip())
    if entry is None:
        return None
    return Learning(text=entry["text"], task_id=entry["task_id"], day=entry["day"])


def _slots(layout: _Layout) -> list[_Slot]:
    """The section's non-blank lines: ralph's entries and the lines people wrote."""
    if layout.heading is None:
        return []
    slots = []
    for index in range(layout.heading + 1, layout.end):
        line = layout.lines[index]
        entry = _parse_entry(line)
        lesson = _Lesson.of(entry.text if entry else clean_learning(line))
        if lesson.key:
            slots.append(_Slot(lesson, entry, index))
    return slots


class _Lessons:
    """The lessons seen so far, found again by key or by shared words without a full scan.

    Prefix filtering: with words in one fixed order (rarest first), two word sets whose
    Jaccard index reaches SIMILAR_WORDS share a word among the first few of each, so only the
    lessons filed under those words are compared.
    """

    def __init__(self, everything: Sequence[_Slot]) -> None:
        self._rarity = Counter(word for slot in everything for word in slot.lesson.words)
        self._by_key: dict[str, list[_Slot]] = {}
        self._by_word: dict[str, list[_Slot]] = {}
        self._order: dict[int, int] = {}

    def add(self, slot: _Slot) -> None:
        self._order[id(slot)] = len(self._order)
        self._by_key.setdefault(slot.lesson.key, []).append(slot)
        for word in self._prefix(slot.lesson.words):
            self._by_word.setdefault(word, []).append(slot)

    def find(self, lesson: _Lesson) -> _Slot | None:
        """The lesson most like ``lesson`` (the later one on a tie), if it is the same lesson."""
        candidates = {id(slot): slot for slot in self._by_key.get(lesson.key, [])}
        for word in self._prefix(lesson.words):
            candidates.update((id(slot), slot) for slot in self._by_word.get(word, []))
        best: _Slot | None = None
        best_rank = (SIMILAR_WORDS, -1)
        for slot in candidates.values():
            rank = (lesson.likeness(slot.lesson), self._order[id(slot)])
            if rank >= best_rank:
                best, best_rank = slot, rank
        return best

    def _prefix(self, words: frozenset[str]) -> list[str]:
        if len(words) < MIN_SIMILAR_WORDS:
            return []
        # The epsilon keeps float rounding from asking for one shared word too many.
        overlap = math.ceil(SIMILAR_WORDS * len(words) - 1e-9)
        ordered = sorted(words, key=lambda word: (self._rarity[word], word))
        return ordered[: len(words) - overlap + 1]


def _relabel(slot: _Slot, newer: Learning) -> bool:
    """Give an entry the label of a learning repeating it, unless that one is older."""
    entry = slot.entry
    if entry is None or newer.day < entry.day:
        return False
    if (newer.task_id, newer.day) == (entry.task_id, entry.day):
        return False
    slot.entry = replace(entry, task_id=newer.task_id, day=newer.day)
    return True


def _apart(slot: _Slot, learning: Learning) -> bool:
    """Whether ``learning`` is its own lesson although it reads like the entry of ``slot``:
    it names its own task and that entry is another task's. "Task a failed 3 attempts;
    check `pytest` failed" and the same of task b are two lessons, not one."""
    entry = slot.entry
    if entry is None or entry.task_id == learning.task_id:
        return False
    return _names(learning.text, learning.task_id) or _names(entry.text, entry.task_id)


def _names(text: str, task_id: str) -> bool:
    """Whether ``text`` names ``task_id`` as a task: "task <id>" or "`<id>`" (an id such as
    ``a`` or ``fix`` is also a plain word, so a bare mention doesn't count)."""
    named = rf"(?:\btask\s+`?{re.escape(task_id)}`?|`{re.escape(task_id)}`)(?![\w-])"
    return re.search(named, text, flags=re.IGNORECASE) is not None


def _relabelled_lines(layout: _Layout, slots: list[_Slot]) -> tuple[str, ...]:
    """The file's lines with the entries of ``slots`` (those in the file) written anew."""
    lines = list(layout.lines)
    for slot in slots:
        if slot.line is not None and slot.entry is not None:
            old = lines[slot.line]
            ending = old[len(old.rstrip("\r\n")) :]
            lines[slot.line] = slot.entry.as_line() + ending
    return tuple(lines)


def _before(day: str, cutoff: date) -> bool:
    try:
        return date.fromisoformat(day) < cutoff
    except ValueError:  # a date like 2026-13-40 that a person typed: not old, just odd
        return False


def _fold_blank_runs(lines: list[str]) -> list[str]:
    folded: list[str] = []
    for line in lines:
        if not line.strip() and folded and not folded[-1].strip():
            continue
        folded.append(line)
    return folded


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _insert_entries(layout: _Layout, entries: list[str], heading: str = LEARNINGS_HEADING) -> str:
    lines = list(layout.lines)
    if layout.heading is None:
        opening = f"\n{heading}\n\n" if lines else f"{heading}\n\n"
        return "".join(lines) + opening + "".join(entries)
    if not entries:
        return "".join(lines)
    # New entries go after the last non-blank line, so the blank lines that part the section
    # from the next heading stay after them.
    at = layout.end
    while at > layout.heading + 1 and not lines[at - 1].strip():
        at -= 1
    if at == layout.heading + 1 and at < layout.end:
        at += 1
    before, after = lines[:at], lines[at:]
    before[-1] = _ended(before[-1])
    if at == layout.heading + 1:
        before.append("\n")
    if after and after[0].strip():
        entries = [*entries, "\n"]
    return "".join(before + entries + after)


@dataclass(frozen=True)
class _Parts:
    """A memory file too big for the prompt, around the learnings to choose from."""

    before: str
    heading: str
    after: str
    file_name: str


def _fit_learnings(parts: _Parts, items: list[str], spec_words: frozenset[str], budget: int) -> str:
    """Human text whole, then the learnings that fit ``budget``, best first, in file order."""
    gap = "\n" if parts.after else ""
    # Room is reserved for the longest note, the one that leaves every learning out.
    longest_note = _left_out_note(len(items), len(items), parts.file_name)
    skeleton = parts.before + parts.heading + "\n" + longest_note + gap + parts.after
    room = budget - _size(skeleton)
    if room < 0:
        return _truncate(parts.before + parts.after, budget)
    kept: list[int] = []
    for index in _prompt_order(items, spec_words):
        size = _size(items[index])
        if size <= room:
            kept.append(index)
            room -= size
    kept.sort()
    left_out = len(items) - len(kept)
    note = _left_out_note(left_out, len(items), parts.file_name) if left_out else ""
    shown = "".join(items[index] for index in kept)
    return parts.before + parts.heading + "\n" + note + shown + gap + parts.after


def _prompt_order(items: list[str], spec_words: frozenset[str]) -> list[int]:
    """Indexes of ``items``, most words shared with the spec first, then newest first.

    A line a person wrote has no date: it counts as being as new as the entry above it.
    """
    ranks: list[tuple[int, str, int]] = []
    day = ""
    for index, item in enumerate(items):
        entry = _parse_entry(item)
        if entry is not None:
            day = entry.day
        text = entry.text if entry is not None else item
        shared = len(content_words(text) & spec_words) if spec_words else 0
        ranks.append((shared, day, index))
    ranks.sort(reverse=True)
    return [index for _, _, index in ranks]


def _left_out_note(count: int, total: int, file_name: str) -> str:
    noun = "learning" if total == 1 else "learnings"
    return (
        f"({count} of {total} {noun} left out to fit the prompt budget; "
        f"shown: those closest to this task, then the newest; all are in {file_name})\n"
    )


def _truncate(text: str, budget: int) -> str:
    """The start of ``text`` within ``budget`` bytes, cut after a whole line where there is one."""
    data = text.encode("utf-8")[: max(budget, 0)]
    newline = data.rfind(b"\n")
    if newline >= 0:
        data = data[: newline + 1]
    # A cut inside a multi-byte character leaves a partial one at the end; drop it.
    return data.decode("utf-8", errors="ignore")


def _ended(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"


def _size(text: str) -> int:
    return len(text.encode("utf-8"))
