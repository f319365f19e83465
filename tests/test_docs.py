"""The docs check: the examples in README.md and docs/ run, and say what ralph really does.

Every example is read from the Markdown itself (the fenced block or the table under a known
heading), never copied here, so a doc and the behaviour it describes can't drift apart.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, git

from ralph.outcome import Reason
from ralph.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EVENT_FIELDS_COMMON = {"schema", "ts", "mono", "run_id", "event"}
SCRIPTED_EXAMPLE = "## Example: a task that passes on the second attempt"

# --- reading Markdown -----------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s")


def doc(name: str) -> str:
    """The text of a page, ``README.md`` or ``docs/<page>.md``."""
    return (ROOT / name).read_text(encoding="utf-8")


def _lines_outside_code(text: str) -> Iterator[tuple[str, bool]]:
    """Each line with whether it is outside a fenced code block (fence lines count as inside)."""
    fence = ""
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if opened and not fence:
            fence = opened.group(1)
            yield line, False
        elif opened and fence and opened.group(1)[0] == fence[0]:
            closing = len(opened.group(1)) >= len(fence) and not opened.group(2).strip()
            if closing:
                fence = ""
            yield line, False
        else:
            yield line, not fence


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` (a whole heading line, e.g. ``## Events``), up to the next
    heading of the same or a higher level; headings inside code blocks don't count."""
    level = len(heading) - len(heading.lstrip("#"))
    found: list[str] = []
    inside = False
    for line, outside in _lines_outside_code(text):
        heading_here = _HEADING.match(line) if outside else None
        if inside and heading_here and len(heading_here.group(1)) <= level:
            break
        if inside:
            found.append(line)
        elif outside and line.strip() == heading:
            inside = True
    assert inside, f"no heading {heading!r}"
    return "\n".join(found) + "\n"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, content) of every fenced code block, in order; indentation up to the
    fence's own is removed (blocks inside list items)."""
    blocks: list[tuple[str, str]] = []
    body: list[str] = []
    fence, indent, info = "", 0, ""
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if not fence and opened:
            fence, info, body = opened.group(1), opened.group(2).strip(), []
            indent = len(line) - len(line.lstrip(" "))
        elif fence and opened and opened.group(1)[0] == fence[0] and not opened.group(2).strip():
            if len(opened.group(1)) >= len(fence):
                blocks.append((info, "".join(body)))
                fence = ""
                continue
            body.append(line[indent:] + "\n")
        elif fence:
            cut = min(indent, len(line) - len(line.lstrip(" ")))
            body.append(line[cut:] + "\n")
    return blocks


def markdown_block(text: str) -> str:
    """The first ```markdown block in ``text`` (a spec example)."""
    return next(body for info, body in fenced_blocks(text) if info == "markdown")


def tables(text: str) -> list[list[list[str]]]:
    """Every table outside code blocks: its rows (header first, separator left out), each a
    list of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line, outside in [*_lines_outside_code(text), ("", True)]:
        stripped = line.strip()
        if outside and stripped.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", stripped.strip("|"))]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
            continue
        if current:
            found.append(current)
            current = []
    return found


def table_under(text: str, first_header: str) -> list[list[str]]:
    """The rows (without the header) of the first table whose first header cell is
    ``first_header``."""
    for table in tables(text):
        if table[0][0] == first_header:
            return table[1:]
    raise AssertionError(f"no table whose first column is {first_header!r}")


def code_spans(text: str) -> list[str]:
    """The contents of the inline code spans in ``text``, in order."""
    return [span.strip() for _, span in re.findall(r"(`+)(.+?)\1", text)]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a documented pattern: ``<placeholder>`` stands for any text, a lone ``N``
    or ``M`` for a number."""
    parts = re.split(r"(<[^>]+>|\b[NM]\b)", pattern)
    regex = "".join(
        ".+" if part.startswith("<") else r"\d+" if part in ("N", "M") else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


# --- running ralph --------------------------------------------------------------------


def python_first_on_path() -> dict[str, str]:
    """An environment whose ``python`` is the interpreter running the tests (the docs'
    checks say ``python``)."""
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def ralph_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ralph -C root ARGS`` without any RALPH_* variable of the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RALPH_")}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(root), "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def trailer_names(message_trailers: str) -> list[str]:
    """The keys of ``Key: value`` trailer lines, in order."""
    return [m.group(1) for m in re.finditer(r"^([A-Za-z][A-Za-z-]*): ", message_trailers, re.M)]


# --- docs/scripted-agent.md -----------------------------------------------------------


def test_scripted_agent_example_runs_as_documented(project: Project) -> None:
    """The scripted agent's example passes on its second attempt and its commit carries
    exactly the trailers the doc's `git log -1` shows, with the learning it documents."""
    example = section(doc("docs/scripted-agent.md"), SCRIPTED_EXAMPLE)
    blocks = fenced_blocks(example)
    settings_toml = next(body for info, body in blocks if info == "toml" and "agent" in body)
    script_toml = next(body for info, body in blocks if info == "toml" and "[[tasks." in body)
    spec_text = markdown_block(example)
    log_sample = next(body for info, body in blocks if body.startswith("$ git log -1"))
    spec_path = re.search(r"^`(specs/[^`]+\.md)`:", example, re.M)
    assert spec_path is not None, "the example names its spec file"

    settings = tomllib.loads(settings_toml)
    settings["agent_script"] = str(project.script_path)
    project.settings = settings
    project.script_path.write_text(script_toml, encoding="utf-8")
    project.write(spec_path.group(1), spec_text)
    project.write("calc.py", "def add(a, b):\n    return a + b\n")
    project.write("tests/__init__.py", "")
    project.commit("the example's repository")

    project.ralph("run", "--once", env=python_first_on_path(), check_code=0)

    command, subject, blank, *trailers = log_sample.splitlines()
    fmt = re.search(r"--format='([^']+)'", command)
    assert fmt is not None
    real = project.git("log", "-1", f"--format={fmt.group(1)}").splitlines()
    assert real[0] == subject
    assert blank == "" and real[1] == ""
    assert trailer_names("\n".join(real[2:])) == trailer_names("\n".join(trailers))
    reasons = [e["reason"] for e in project.events() if e["event"] == "rolled_back"]
    assert reasons == ["check_failed"]
    learning = re.search(r"with `(- \[[^`]*<date>\][^`]*)`\s+under", example)
    assert learning is not None, "the example shows the learning it leaves"
    line = re.escape(learning.group(1)).replace(re.escape("<date>"), r"\d{4}-\d{2}-\d{2}")
    assert re.search(rf"^{line}$", (project.root / "AGENTS.md").read_text(), re.M)


# --- ralph init -------------------------------------------------------------------------


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A fresh git repository with nothing in it."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    return root


def files_in(root: Path) -> set[str]:
    """Every file under ``root`` outside ``.git``, as paths from ``root``."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(root).parts[:1]
    }


def init_section() -> str:
    """getting-started.md's part about `ralph init`."""
    return section(doc("docs/getting-started.md"), "## 2. `ralph init`")


def test_init_writes_the_files_the_docs_list(empty_repo: Path) -> None:
    """`ralph init` in an empty repository writes exactly the files getting-started.md and
    the README list, and prints what the doc's sample output prints."""
    result = ralph_in(empty_repo, "init")
    assert result.returncode == 0, result.stderr
    written = files_in(empty_repo)

    page = init_section()
    table = {code_spans(row[0])[0] for row in table_under(page, "file")}
    sample = next(body for info, body in fenced_blocks(page) if body.startswith("$ ralph init"))
    sample_lines = sample.splitlines()[1:]
    assert table == written
    assert {line.split(": ")[0] for line in sample_lines if line.endswith(": written")} == written
    assert result.stdout.splitlines() == sample_lines

    readme = doc("README.md")
    commands = tables(section(readme, "## Commands"))[0]
    row = next(r for r in commands if "`ralph init`" in r[0])
    assert written <= set(code_spans(row[1]))
    quick_start = section(readme, "## Install and use on your repository")
    comment = re.search(r"^ralph init\s+# writes (.+?) \(", quick_start, re.M)
    assert comment is not None
    assert set(comment.group(1).split(", ")) == written


def test_example_spec_shows_every_front_matter_key(empty_repo: Path) -> None:
    """The example spec `ralph init` writes shows every key specs.md documents, and ralph
    reads it as a valid task that stays out of the loop."""
    assert ralph_in(empty_repo, "init").returncode == 0
    example = (empty_repo / "specs" / "example.md").read_text(encoding="utf-8")
    front = example.split("\n---\n", 1)[0]
    keys = {
        code_spans(row[0])[0]
        for row in table_under(section(doc("docs/specs.md"), "## Front matter"), "key")
    }
    shown = set(re.findall(r"^(?:#\s*)?([a-z_]+):", front, re.M))
    assert keys <= shown, f"missing from specs/example.md: {sorted(keys - shown)}"

    (empty_repo / "ralph.toml").write_text(
        'agent = "command"\nagent_command = "true"\nchecks = ["true"]\n', encoding="utf-8"
    )
    result = ralph_in(empty_repo, "status", "--json")
    assert result.returncode == 0, result.stderr
    (task,) = json.loads(result.stdout)["tasks"]
    assert (task["state"], task["reason"]) == ("pending", "disabled (enabled: false)")


def gitattributes_lines_init_keeps() -> list[str]:
    """The `.gitattributes` lines getting-started.md says make `init` add nothing."""
    row = next(r for r in table_under(init_section(), "file") if "`.gitattributes`" in r[0])
    return [span for span in code_spans(row[2]) if "merge=" in span]


@pytest.mark.parametrize("line", gitattributes_lines_init_keeps())
def test_init_adds_no_merge_line_when_one_is_set(empty_repo: Path, line: str) -> None:
    """`ralph init` leaves a `.gitattributes` alone when a line the docs name already sets
    how the memory file merges."""
    path = empty_repo / ".gitattributes"
    path.write_text(line + "\n", encoding="utf-8")
    assert ralph_in(empty_repo, "init").returncode == 0
    assert path.read_text(encoding="utf-8") == line + "\n"


# --- one run with every kind of commit ------------------------------------------------


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One `ralph run --once`: a task that passes after a failed attempt that learned
    something, a task that fails its check, and a task whose agent crashes; `model` is set,
    and the event log starts with a torn line, as after a crash mid-write."""
    base = tmp_path_factory.mktemp("mixed")
    root = base / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "test@example.invalid")
    project = Project(root, base / "script.toml")
    project.write("AGENTS.md", "# Agents\n")
    project.spec("learns", checks=["test -f good.txt"], priority=1)
    project.spec("fails", checks=["test -f never.txt"], max_attempts=1, priority=2)
    project.spec("crashes", max_attempts=1, priority=3)
    project.attempts(
        "learns",
        {"steps": [{"write": "bad.txt", "content": "x\n"}, {"learn": "good.txt is the goal."}]},
        {"steps": [{"write": "good.txt", "content": "x\n"}]},
    )
    project.attempts("fails", {"steps": [{"write": "other.txt", "content": "x\n"}]})
    project.attempts("crashes", {"steps": [{"write": "c.txt", "content": "x\n"}], "exit": 1})
    project.configure(model="some-model")
    project.commit("setup")
    events = root / ".ralph" / "events.jsonl"
    events.parent.mkdir()
    events.write_text('{"schema": 1, "event": "run_started", "ts": "2026-01-01T00:0', "utf-8")
    project.ralph("run", "--once", check_code=1)
    return project


def ralph_commits(project: Project) -> list[tuple[str, list[str]]]:
    """(subject, trailer lines) of every commit with a ralph trailer, oldest first."""
    out = project.git("log", "--reverse", "--format=%s%x1f%(trailers:only,unfold)%x1e")
    commits = []
    for entry in out.split("\x1e"):
        if not entry.strip():
            continue
        subject, _, trailers = entry.strip("\n").partition("\x1f")
        lines = [line for line in trailers.splitlines() if line.strip()]
        if any(line.startswith("Ralph-") for line in lines):
            commits.append((subject, lines))
    return commits


def test_commit_kinds_table_lists_every_commit_ralph_makes(mixed_run: Project) -> None:
    """Every commit of the run matches a kind in memory.md's table (subject and trailer),
    and only the task that failed its check gets a lesson commit."""
    rows = table_under(section(doc("docs/memory.md"), "## Commits and exit codes"), "subject")
    kinds = [(code_spans(row[0])[0], code_spans(row[1])[0]) for row in rows]
    commits = ralph_commits(mixed_run)
    hit: set[str] = set()
    for subject, trailers in commits:
        matching = [
            kind
            for kind, trailer in kinds
            if pattern_regex(kind).fullmatch(subject)
            and any(pattern_regex(trailer).fullmatch(line) for line in trailers)
        ]
        assert matching, f"memory.md lists no kind of commit for {subject!r} {trailers}"
        hit.update(matching)
    # A task commit, an attempt's learnings, and the lesson of the task that failed its check.
    assert len(hit) == 3, (hit, commits)
    learned_from = [line for _, trailers in commits for line in trailers]
    assert "Ralph-Learnings: fails" in learned_from
    assert "Ralph-Learnings: crashes" not in learned_from


def event_table() -> dict[str, set[str]]:
    """Each event telemetry.md documents, with its fields."""
    page = section(doc("docs/telemetry.md"), "## The event log")
    return {code_spans(row[0])[0]: set(code_spans(row[1])) for row in table_under(page, "event")}


def logged_events(project: Project) -> list[dict[str, Any]]:
    """The events of the run, leaving out the torn line the fixture planted."""
    lines = (project.root / ".ralph" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


def emitted_events() -> set[str]:
    """Every event name ralph's source passes to ``.emit(...)``; a name that isn't a string
    literal fails, since the docs couldn't be checked against it."""
    names: set[str] = set()
    for path in sorted((ROOT / "ralph").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "emit"
            ):
                continue
            first = node.args[0] if node.args else None
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert isinstance(first, ast.Constant), f"{where}: an event name that isn't a literal"
            assert isinstance(first.value, str), where
            names.add(first.value)
    return names


def test_telemetry_lists_every_event_ralph_emits() -> None:
    """telemetry.md's event table names every event ralph's source emits, and no other."""
    emitted = emitted_events()
    assert {"run_started", "committed", "rolled_back"} <= emitted, "the source scan broke"
    documented = set(event_table())
    assert emitted - documented == set(), "emitted but not in telemetry.md"
    assert documented - emitted == set(), "in telemetry.md but never emitted"


def test_every_way_an_attempt_ends_is_documented() -> None:
    """attempt.md's table lists every Reason, says "no" exactly for the ones that don't use
    up an attempt, and telemetry.md lists every reason a rollback can carry."""
    rows = table_under(section(doc("docs/attempt.md"), "## Every way an attempt ends"), "reason")
    uses = {code_spans(row[0])[0]: row[2] for row in rows}
    assert set(uses) == {reason.value for reason in Reason}
    for value, text in uses.items():
        assert text.startswith("**no**") == (not Reason(value).counts), value
    page = doc("docs/telemetry.md")
    listed = re.search(r"The `reason` of `rolled_back` is one of (.+?)\n\n", page, re.S)
    assert listed is not None
    failures = {reason.value for reason in Reason if not reason.passed}
    assert set(code_spans(listed.group(1))) == failures


def test_events_carry_the_documented_fields(mixed_run: Project) -> None:
    """Every event the run logged is in telemetry.md's table with exactly the fields it has,
    and the reasons it gives are among the documented ones."""
    page = doc("docs/telemetry.md")
    common = {
        code_spans(row[0])[0] for row in table_under(section(page, "## The event log"), "field")
    }
    assert common == EVENT_FIELDS_COMMON
    documented = event_table()
    for event in logged_events(mixed_run):
        name = event["event"]
        assert name in documented, f"telemetry.md doesn't list the event {name!r}"
        assert set(event) - common == documented[name], name
    run_end_reasons = {code_spans(row[0])[0] for row in table_under(page, "reason")}
    rolled_back = re.search(r"The `reason` of `rolled_back` is one of (.+?)\n\n", page, re.S)
    assert rolled_back is not None
    rollback_reasons = set(code_spans(rolled_back.group(1)))
    for event in logged_events(mixed_run):
        if event["event"] == "run_finished":
            assert event["reason"] in run_end_reasons
        if event["event"] == "rolled_back":
            assert event["reason"] in rollback_reasons


def test_a_torn_event_line_loses_only_itself(mixed_run: Project) -> None:
    """After a torn last line in events.jsonl, the next event starts on a fresh line, so
    every line but the torn one is a whole event."""
    lines = (mixed_run.root / ".ralph" / "events.jsonl").read_text().splitlines()
    assert lines[0].endswith('"ts": "2026-01-01T00:0')
    events = [json.loads(line) for line in lines[1:]]
    assert events[0]["event"] == "run_started"


def test_scripted_agent_records_no_model(mixed_run: Project) -> None:
    """With `model` set, the scripted agent (which never gets a model) leaves no
    `Ralph-Model` trailer and a null `model` in its events, as settings.md says."""
    for _subject, trailers in ralph_commits(mixed_run):
        assert not any(line.startswith("Ralph-Model:") for line in trailers)
    exits = [e for e in logged_events(mixed_run) if e["event"] == "agent_exited"]
    assert exits and all(e["model"] is None for e in exits)


# --- settings, commands, specs ----------------------------------------------------------


def test_settings_reference_lists_every_setting() -> None:
    """docs/settings.md documents every setting ralph reads, and no setting it doesn't."""
    rows = table_under(section(doc("docs/settings.md"), "## Every setting"), "key")
    documented = {code_spans(row[0])[0] for row in rows}
    assert documented == set(Settings.model_fields)


def test_readme_lists_every_command() -> None:
    """The README's command table names every command `ralph --help` lists, and no other."""
    result = subprocess.run(
        [sys.executable, "-m", "ralph", "--help"], capture_output=True, text=True, check=True
    )
    listed = result.stdout.split("Commands:", 1)[1]
    real = set(re.findall(r"^  (\S+)", listed, re.M))
    table = tables(section(doc("README.md"), "## Commands"))[0]
    documented = set()
    for row in table[1:]:
        for span in code_spans(row[0]):
            words = span.split()
            if words[0] == "ralph" and len(words) > 1 and not words[1].startswith("-"):
                documented.add(words[1])
    assert documented == real


SPEC_EXAMPLES = [
    ("docs/specs.md", "## A complete example"),
    ("docs/getting-started.md", "## 4. Write specs"),
    ("docs/scripted-agent.md", SCRIPTED_EXAMPLE),
]


def test_documented_specs_are_valid(project: Project) -> None:
    """Every spec example in the docs is read as a valid task, and the complete example in
    specs.md gets the id and title its front matter gives."""
    for number, (page, heading) in enumerate(SPEC_EXAMPLES):
        text = section(doc(page), heading)
        named = re.search(r"^`specs/([^`]+\.md)`:", text, re.M)
        name = named.group(1) if named else f"example-{number}.md"
        project.write(f"specs/{name}", markdown_block(text))
    tasks = project.status_json()
    assert len(tasks) == len(SPEC_EXAMPLES)
    assert all(task["state"] != "invalid" for task in tasks.values()), tasks
    complete = markdown_block(section(doc("docs/specs.md"), "## A complete example"))
    spec_id = re.search(r"^id: (\S+)", complete, re.M)
    title = re.search(r"^title: (.+?)\s+#", complete, re.M)
    assert spec_id is not None and title is not None
    assert tasks[spec_id.group(1)]["title"] == title.group(1)


def test_doctor_with_a_settings_error_still_checks_the_rest(project: Project) -> None:
    """With a settings error, `ralph doctor` prints the settings FAIL line and still checks
    git, the repository and the lock, then exits 1."""
    project.write("ralph.toml", 'checks = ["true"]\nbogus = 1\n')
    result = project.ralph("doctor", check_code=1)
    lines = result.stdout.splitlines()
    topics = [line.split(":", 1)[0].split()[-1] for line in lines]
    assert lines[0].startswith("FAIL") and topics[0] == "settings"
    assert {"git", "repository", "lock"} <= set(topics[1:])
