"""The memory file (AGENTS.md) and the learnings agents leave behind in it.

Agents write learnings as markdown bullets to a scratch file; ralph cleans them, drops the
ones the memory file already holds and appends the rest under ``## Learnings`` as
``- [<task_id> · <day>] <text>``. Everything outside that section belongs to people and is
kept byte for byte.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ralph.atomic import write_atomic

MAX_LEARNING_CHARS = 400
MAX_LEARNINGS_PER_FILE = 20
LEARNINGS_HEADING = "## Learnings"

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


@dataclass(frozen=True)
class Learning:
    """One learning as it stands in the memory file."""

    text: str
    """Cleaned text, a single line."""
    task_id: str
    day: str
    """ISO date, e.g. ``2026-11-23``."""


@dataclass(frozen=True)
class _Layout:
    """A memory file cut into lines (each keeps its newline) around the Learnings section."""

    lines: tuple[str, ...]
    heading: int | None
    end: int

    def section(self) -> tuple[str, ...]:
        return () if self.heading is None else self.lines[self.heading + 1 : self.end]


def read_learnings_file(path: Path) -> list[str]:
    """Parse the markdown bullets an agent wrote to its learnings file into cleaned learnings.

    A missing or unreadable file gives ``[]``. Bullets start with ``-``, ``*``, ``+`` or
    ``1.``; indented lines join their bullet; any other paragraph is one learning; headings are
    titles, not learnings, and are dropped. Empty and repeated learnings are dropped and at most
    MAX_LEARNINGS_PER_FILE are returned.
    """
    # is_file keeps a FIFO or device at the path from blocking or flooding the read.
    if not path.is_file():
        return []
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_LEARNINGS_FILE_BYTES)
    except OSError:
        return []
    learnings: list[str] = []
    seen: set[str] = set()
    for item in _split_items(raw.decode("utf-8-sig", errors="replace")):
        text = clean_learning(item)
        key = normalise(text)
        if key and key not in seen:
            seen.add(key)
            learnings.append(text)
            if len(learnings) == MAX_LEARNINGS_PER_FILE:
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


def existing_learnings(memory_path: Path) -> list[Learning]:
    """The entries under the Learnings heading, oldest first (missing file: [])."""
    try:
        text = memory_path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries = (_ENTRY.fullmatch(line.rstrip()) for line in _layout(text).section())
    return [
        Learning(text=entry["text"], task_id=entry["task_id"], day=entry["day"])
        for entry in entries
        if entry
    ]


def add_learnings(memory_path: Path, texts: list[str], task_id: str, day: str) -> list[Learning]:
    """Append the new ones among ``texts`` to the Learnings section and return those added.

    Texts are cleaned first; one whose normalise() key matches a line already in the section,
    or an earlier text of this call, is skipped. The heading is appended if missing, and
    content outside the section is kept byte for byte. Nothing new: the file is not rewritten.
    Raises ValueError for a task id or day that would break the entry format.
    """
    if not _TASK_ID.fullmatch(task_id):
        raise ValueError(f"task id {task_id!r} cannot label a learning")
    if not _DAY.fullmatch(day):
        raise ValueError(f"day {day!r} is not an ISO date like 2026-11-23")
    try:
        raw = memory_path.read_bytes()
    except FileNotFoundError:
        raw = b""
    # surrogateescape round-trips bytes that are not UTF-8, so people's text stays untouched.
    layout = _layout(raw.decode("utf-8", errors="surrogateescape"))
    seen = {normalise(_line_text(line)) for line in layout.section()}
    added: list[Learning] = []
    for text in texts:
        cleaned = clean_learning(text)
        key = normalise(cleaned)
        if key and key not in seen:
            seen.add(key)
            added.append(Learning(text=cleaned, task_id=task_id, day=day))
    if not added:
        return []
    entries = [f"- [{entry.task_id} · {entry.day}] {entry.text}\n" for entry in added]
    updated = _insert_entries(layout, entries)
    write_atomic(memory_path, updated.encode("utf-8", errors="surrogateescape"))
    return added


def memory_for_prompt(memory_path: Path, budget: int) -> str:
    """The memory file's text for a prompt, at most ``budget`` UTF-8 bytes (missing file: "").

    When the whole file does not fit, the part people wrote comes first, then the newest
    learnings that fit and a line saying how many older ones were left out.
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
    return _fit_learnings(before, heading, items, after, budget)


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


def _layout(text: str) -> _Layout:
    lines = tuple(_LINE.findall(text))
    for heading, line in enumerate(lines):
        if line.rstrip() == LEARNINGS_HEADING:
            ends = (i for i in range(heading + 1, len(lines)) if _SECTION_END.match(lines[i]))
            return _Layout(lines, heading, next(ends, len(lines)))
    return _Layout(lines, None, len(lines))


def _line_text(line: str) -> str:
    """The learning a line of the section holds, whether ralph or a person wrote it."""
    entry = _ENTRY.fullmatch(line.rstrip())
    return entry["text"] if entry else clean_learning(line)


def _insert_entries(layout: _Layout, entries: list[str]) -> str:
    lines = list(layout.lines)
    if layout.heading is None:
        opening = f"\n{LEARNINGS_HEADING}\n\n" if lines else f"{LEARNINGS_HEADING}\n\n"
        return "".join(lines) + opening + "".join(entries)
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


def _fit_learnings(before: str, heading: str, items: list[str], after: str, budget: int) -> str:
    """Human text whole, then the newest learnings that fit ``budget`` after it."""
    gap = "\n" if after else ""
    # Room is reserved for the longest note, the one that leaves every learning out.
    skeleton = before + heading + "\n" + _left_out_note(len(items)) + gap + after
    room = budget - _size(skeleton)
    if room < 0:
        return _truncate(before + after, budget)
    kept: list[str] = []
    for item in reversed(items):
        room -= _size(item)
        if room < 0:
            break
        kept.append(item)
    left_out = len(items) - len(kept)
    note = _left_out_note(left_out) if left_out else ""
    return before + heading + "\n" + note + "".join(reversed(kept)) + gap + after


def _left_out_note(count: int) -> str:
    noun = "learning" if count == 1 else "learnings"
    return f"({count} older {noun} left out to fit the prompt budget)\n"


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
