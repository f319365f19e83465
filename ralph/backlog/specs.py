"""Task specs: every ``*.md`` under ``specs_dir`` is one task, with optional YAML front matter.

A spec that can't be read becomes an InvalidSpec whose reason names the file and what is
wrong; it never stops the loop.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from ralph.durations import parse_duration

MAX_SPEC_BYTES = 256 * 1024
MAX_FRONT_MATTER_BYTES = 64 * 1024
MAX_FRONT_MATTER_DEPTH = 20
"""Front matter is a handful of keys; these bounds keep a hostile file cheap to refuse."""
DEFAULT_PRIORITY = 100
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ID = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT})*$")
# An ATX heading; a closing run of #s needs a space before it, so "# Use C#" keeps its "#".
_HEADING = re.compile(r"^ {0,3}#[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_DECLARED_ID = re.compile(
    rb"^id:[ \t]*(['\"]?)([A-Za-z0-9][A-Za-z0-9._/-]*)\1[ \t]*(?:#.*)?\r?$", re.MULTILINE
)


def _one_or_many(value: object) -> object:
    # `depends_on: x` means one id; an empty `depends_on:` (YAML null) means none.
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _not_bool(value: object) -> object:
    # pydantic would read `true` as 1; a switch where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    return value


def _optional_duration(value: object) -> float | None:
    return None if value is None else parse_duration(value)


Count = Annotated[int, BeforeValidator(_not_bool)]
OneOrMany = Annotated[list[str], BeforeValidator(_one_or_many)]


class FrontMatter(BaseModel):
    """The keys a spec's front matter may hold; anything else is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None
    title: str | None = None
    priority: Count = DEFAULT_PRIORITY
    depends_on: OneOrMany = Field(default_factory=list)
    checks: OneOrMany = Field(default_factory=list)
    max_attempts: Count | None = Field(default=None, ge=1, le=100)
    timeout: Annotated[float | None, BeforeValidator(_optional_duration)] = None
    enabled: bool = True
    allow_empty: bool = False
    touches: OneOrMany = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError(
                "use letters, digits and . _ / - (no spaces), each part starting with a letter "
                "or digit"
            )
        return value


@dataclass(frozen=True)
class Spec:
    """One readable task spec."""

    id: str
    title: str
    path: str
    body: str
    digest: str
    priority: int = DEFAULT_PRIORITY
    depends_on: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    max_attempts: int | None = None
    timeout: float | None = None
    enabled: bool = True
    allow_empty: bool = False
    touches: tuple[str, ...] = ()
    """Globs of the paths the task expects to change; empty: not declared."""


@dataclass(frozen=True)
class InvalidSpec:
    """A spec file that can't be used; ``reason`` says why."""

    id: str
    path: str
    reason: str
    digest: str = ""


@dataclass(frozen=True)
class SpecSet:
    """Everything found under ``specs_dir``."""

    specs: tuple[Spec, ...]
    invalid: tuple[InvalidSpec, ...]


class SpecError(ValueError):
    """Raised while parsing one spec; the message is the reason shown to users."""


def load_specs(specs_root: Path, display_prefix: str = "") -> SpecSet:
    """Read every spec under ``specs_root``; duplicates make each copy invalid."""
    parsed: list[Spec | InvalidSpec] = []
    for path in sorted(_spec_files(specs_root)):
        relative = path.relative_to(specs_root).as_posix()
        parsed.append(read_spec(path, relative, display_prefix + relative))
    return _reject_duplicates(parsed)


def _spec_files(specs_root: Path) -> list[Path]:
    files = []
    for path in specs_root.rglob("*.md"):
        relative = path.relative_to(specs_root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        files.append(path)
    return files


def default_id(relative: str) -> str:
    """The id a spec gets from its path: the path under specs_dir without ``.md``."""
    stem = relative.removesuffix(".md")
    return re.sub(r"\s+", "-", stem.strip())


def read_spec(path: Path, relative: str, display: str) -> Spec | InvalidSpec:
    """Parse one spec file; on any problem return an InvalidSpec naming the file."""
    fallback_id = default_id(relative)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return InvalidSpec(fallback_id, display, f"{display}: cannot read: {exc.strerror}")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        return parse_spec(raw, relative, digest, display)
    except SpecError as exc:
        return InvalidSpec(_declared_id(raw) or fallback_id, display, f"{display}: {exc}", digest)


def parse_spec(raw: bytes, relative: str, digest: str, display: str | None = None) -> Spec:
    """Turn a spec file's bytes into a Spec, or raise SpecError saying what is wrong."""
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"spec is {len(raw)} bytes, more than the limit of {MAX_SPEC_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 (byte {exc.start}); save the file as UTF-8") from None
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    meta, body = split_front_matter(text)
    if not body.strip():
        raise SpecError("empty spec: write what the task is below the front matter")
    try:
        front = FrontMatter.model_validate(meta)
    except ValidationError as exc:
        raise SpecError(_describe(exc)) from None
    spec_id = front.id or default_id(relative)
    if not _ID.match(spec_id):
        raise SpecError(
            f"id {shown(spec_id)} comes from the file name; set a plain `id:` in the front matter"
        )
    title = front.title or _first_heading(body) or spec_id
    return Spec(
        id=spec_id,
        title=" ".join(title.split()),
        path=display or relative,
        body=body.strip() + "\n",
        digest=digest,
        priority=front.priority,
        depends_on=tuple(front.depends_on),
        checks=tuple(check for check in front.checks if check.strip()),
        max_attempts=front.max_attempts,
        timeout=front.timeout,
        enabled=front.enabled,
        allow_empty=front.allow_empty,
        touches=tuple(glob.strip().strip("/") for glob in front.touches if glob.strip()),
    )


def _first_heading(body: str) -> str | None:
    """The text of the first ``# `` heading outside fenced code blocks."""
    fence = ""
    for line in body.split("\n"):
        opened = _FENCE.match(line)
        if opened:
            marker = opened.group(1)
            if not fence:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = ""
            continue
        heading = None if fence else _HEADING.match(line)
        if heading and heading.group(1).strip():
            return heading.group(1)
    return None


class _Refused(yaml.YAMLError):
    """Front matter ralph won't read, though it may be valid YAML; the message says why."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.problem = message
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice is an error, not a silent overwrite,
    and anchors, aliases and deep nesting are refused before anything is built.

    An alias makes a few hundred bytes stand for billions of items (the "billion laughs"):
    front matter needs none, so none is read.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                "YAML anchors and aliases (&name, *name) are not allowed in front matter; "
                "write each value out",
                event.start_mark,
            )
        if self._depth >= MAX_FRONT_MATTER_DEPTH:
            raise _Refused(
                f"front matter is nested more than {MAX_FRONT_MATTER_DEPTH} levels deep",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable: the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split ``---`` YAML front matter from the body; raise SpecError when it is malformed."""
    first, _, rest = text.partition("\n")
    if first.rstrip() != "---":
        return {}, text
    lines = rest.split("\n")
    for index, line in enumerate(lines):
        if line.rstrip() in ("---", "..."):
            header = "\n".join(lines[:index])
            body = "\n".join(lines[index + 1 :])
            break
    else:
        raise SpecError("front matter opened with --- but never closed")
    size = len(header.encode("utf-8", "surrogatepass"))
    if size > MAX_FRONT_MATTER_BYTES:
        raise SpecError(
            f"front matter is {size} bytes, more than the limit of {MAX_FRONT_MATTER_BYTES}"
        )
    try:
        meta = yaml.load(header, Loader=_StrictLoader)
    except _Refused as exc:
        raise SpecError(f"{exc.problem}{_line_of(exc)}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"front matter is not valid YAML{_line_of(exc)}: {_cut(problem)}") from None
    if meta is None:
        return {}, body
    if not isinstance(meta, dict):
        raise SpecError(f"front matter must be a mapping of keys, got {type(meta).__name__}")
    return {str(key): value for key, value in meta.items()}, body


def _line_of(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 2}" if mark is not None else ""


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:10]:
        key = _cut(".".join(str(part) for part in error["loc"]), 100)
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown front matter key {shown(key)}")
        else:
            message = _cut(str(error["msg"]).removeprefix("Value error, "))
            got = shown(error.get("input"))
            problems.append(f"front matter {shown(key)}: {message} (got {got})")
    return "; ".join(problems)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def shown(value: object) -> str:
    """A bounded ``repr`` of input from a spec file, for a reason people read: whatever the
    input's size or depth, the text stays short and costs little to make."""
    return _SHORT.repr(value)


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _declared_id(raw: bytes) -> str | None:
    """Best effort: the ``id:`` of a spec that is otherwise broken, so dependents find it."""
    head = raw.removeprefix(b"\xef\xbb\xbf")[:4096]
    match = _DECLARED_ID.search(head) if head.startswith(b"---") else None
    if match is None or not _ID.match(match.group(2).decode()):
        return None
    return match.group(2).decode()


def _reject_duplicates(parsed: list[Spec | InvalidSpec]) -> SpecSet:
    paths_by_id: dict[str, list[str]] = {}
    for item in parsed:
        paths_by_id.setdefault(item.id, []).append(item.path)
    specs: list[Spec] = []
    invalid: list[InvalidSpec] = []
    for item in parsed:
        others = [path for path in paths_by_id[item.id] if path != item.path]
        if isinstance(item, InvalidSpec):
            invalid.append(item)
        elif others:
            reason = f"{item.path}: duplicate id {shown(item.id)}, also used by {', '.join(others)}"
            invalid.append(InvalidSpec(item.id, item.path, reason, item.digest))
        else:
            specs.append(item)
    return SpecSet(tuple(specs), tuple(invalid))
