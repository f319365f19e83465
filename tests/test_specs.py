"""Task specs: every *.md under specs_dir is a task; a bad one is reported, never fatal."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Project

from ralph.backlog.specs import (
    DEFAULT_PRIORITY,
    MAX_SPEC_BYTES,
    InvalidSpec,
    Spec,
    SpecError,
    SpecSet,
    load_specs,
    parse_spec,
    split_front_matter,
)


def write(root: Path, relative: str, content: str | bytes) -> Path:
    """Write a file under ``root``, creating folders."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def one_spec(tmp_path: Path, content: str | bytes, relative: str = "task.md") -> Spec:
    """Load a specs folder holding one file and return its (valid) spec."""
    write(tmp_path / "specs", relative, content)
    spec_set = load_specs(tmp_path / "specs", "specs/")
    assert spec_set.invalid == (), spec_set.invalid
    (spec,) = spec_set.specs
    return spec


def one_invalid(tmp_path: Path, content: str | bytes, relative: str = "task.md") -> InvalidSpec:
    """Load a specs folder holding one file and return it as an invalid spec."""
    write(tmp_path / "specs", relative, content)
    spec_set = load_specs(tmp_path / "specs", "specs/")
    assert spec_set.specs == (), spec_set.specs
    (invalid,) = spec_set.invalid
    return invalid


def parse(text: str, relative: str = "task.md") -> Spec:
    """Parse spec text directly."""
    return parse_spec(text.encode(), relative, "digest", f"specs/{relative}")


# --- defaults and front matter --------------------------------------------------------------


def test_defaults_without_front_matter(tmp_path: Path) -> None:
    """Without front matter: id from the path, title from the heading, priority 100, enabled."""
    spec = one_spec(tmp_path, "# Add a login form\n\nMake it work.\n", "login.md")
    assert spec.id == "login"
    assert spec.title == "Add a login form"
    assert spec.priority == DEFAULT_PRIORITY == 100
    assert spec.enabled is True
    assert (spec.depends_on, spec.checks) == ((), ())
    assert (spec.max_attempts, spec.timeout) == (None, None)
    assert spec.path == "specs/login.md"
    assert spec.body == "# Add a login form\n\nMake it work.\n"


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("login.md", "login"),
        ("api/login.md", "api/login"),
        ("api/v2/users.md", "api/v2/users"),
        ("fix the bug.md", "fix-the-bug"),
    ],
)
def test_id_is_the_path_under_specs_dir_without_md(
    tmp_path: Path, relative: str, expected: str
) -> None:
    """A spec's default id is its path under specs_dir without .md (spaces become dashes)."""
    assert one_spec(tmp_path, "# T\n\nbody\n", relative).id == expected


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("# First\n\n# Second\n", "First"),
        ("Intro line.\n\n## Not this\n\n# This one\n", "This one"),
        ("#   Spaced   out   title  \nbody\n", "Spaced out title"),
        ("# Closed heading ##\nbody\n", "Closed heading"),
        ("# Use C#\nbody\n", "Use C#"),
        ("```sh\n# install deps\n```\n# Real title\n", "Real title"),
        ("~~~\n# not a title\n~~~\nno heading here\n", "task"),
        ("#hashtag is not a heading\n", "task"),
        ("Just words.\n", "task"),
        ("---\ntitle: From front matter\n---\n# Heading\n", "From front matter"),
        ("---\nid: custom\n---\nno heading\n", "custom"),
    ],
)
def test_title_is_front_matter_then_first_heading_then_id(text: str, title: str) -> None:
    """The title is `title:`, else the first `# ` heading outside code blocks, else the id."""
    assert parse(text).title == title


def test_every_front_matter_key(tmp_path: Path) -> None:
    """Every documented front-matter key is read into the spec."""
    spec = one_spec(
        tmp_path,
        "---\n"
        "id: login-form\n"
        "title: Build the login form\n"
        "priority: 5\n"
        "depends_on: [db, api/auth]\n"
        "checks: [make e2e, make lint]\n"
        "max_attempts: 7\n"
        "timeout: 1h30m\n"
        "enabled: false\n"
        "allow_empty: true\n"
        "---\n"
        "# Heading\n\nBody.\n",
    )
    assert spec.id == "login-form"
    assert spec.title == "Build the login form"
    assert spec.priority == 5
    assert spec.depends_on == ("db", "api/auth")
    assert spec.checks == ("make e2e", "make lint")
    assert (spec.max_attempts, spec.timeout) == (7, 5400.0)
    assert (spec.enabled, spec.allow_empty) == (False, True)
    assert spec.body == "# Heading\n\nBody.\n"


@pytest.mark.parametrize(
    ("front", "field", "expected"),
    [
        ("depends_on: db", "depends_on", ("db",)),
        ("depends_on:", "depends_on", ()),
        ("depends_on: []", "depends_on", ()),
        ("checks: make e2e", "checks", ("make e2e",)),
        ("checks: ['make e2e', '  ']", "checks", ("make e2e",)),
        ("timeout: 90", "timeout", 90.0),
        ("timeout:", "timeout", None),
        ("priority: -5", "priority", -5),
        ("priority: '7'", "priority", 7),
        ("enabled: no", "enabled", False),
        ("title: '  many   spaces  '", "title", "many spaces"),
    ],
)
def test_front_matter_values_are_read_leniently_where_unambiguous(
    front: str, field: str, expected: object
) -> None:
    """A single string is a one-item list, an empty value is the default, numbers may be quoted."""
    assert getattr(parse(f"---\n{front}\n---\n# T\n"), field) == expected


def test_front_matter_with_no_keys_is_fine() -> None:
    """An empty front matter block is the same as none."""
    spec = parse("---\n---\n# T\n\nbody\n")
    assert (spec.id, spec.title, spec.body) == ("task", "T", "# T\n\nbody\n")


def test_bom_and_crlf_are_handled(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and Windows line endings don't hide the front matter."""
    raw = "\ufeff---\r\nid: win\r\npriority: 3\r\n---\r\n# Windows title\r\n\r\nBody.\r\n"
    spec = one_spec(tmp_path, raw.encode("utf-8"))
    assert (spec.id, spec.priority, spec.title) == ("win", 3, "Windows title")
    assert "\r" not in spec.body


def test_digest_follows_the_file_bytes(tmp_path: Path) -> None:
    """The digest changes exactly when the file's bytes change (failed tasks reset on edit)."""
    first = one_spec(tmp_path, "# T\n\nbody\n").digest
    assert one_spec(tmp_path, "# T\n\nbody\n").digest == first
    assert one_spec(tmp_path, "# T\n\nother body\n").digest != first


# --- split_front_matter ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "meta", "body"),
    [
        ("# T\n", {}, "# T\n"),
        ("---\nid: a\n---\n# T\n", {"id": "a"}, "# T\n"),
        ("---\nid: a\n...\n# T\n", {"id": "a"}, "# T\n"),
        ("---  \nid: a\n---  \n# T\n", {"id": "a"}, "# T\n"),
        ("---\n---\n", {}, ""),
        ("# T\n---\nid: a\n---\n", {}, "# T\n---\nid: a\n---\n"),
        ("----\nnot front matter\n", {}, "----\nnot front matter\n"),
    ],
)
def test_split_front_matter(text: str, meta: dict[str, str], body: str) -> None:
    """Front matter is a YAML block between --- lines at the very top; anything else is body."""
    assert split_front_matter(text) == (meta, body)


# --- invalid specs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("---\nid: a\npriority: [1\n---\n# T\n", "not valid YAML at line 3"),
        ("---\nid: a\ntitle: x\n  nested: oops\n---\n# T\n", "not valid YAML at line 4"),
        ("---\ntitle: a\ntitle: b\n---\n# T\n", "'title' appears twice"),
        ("---\n- a\n- b\n---\n# T\n", "must be a mapping"),
        ("---\njust a sentence\n---\n# T\n", "must be a mapping"),
        ("---\nid: a\n# T\n\nbody\n", "never closed"),
        ("---\nowner: me\n---\n# T\n", "unknown front matter key 'owner'"),
        ("---\npriority: high\n---\n# T\n", "'priority'"),
        ("---\npriority: 1.5\n---\n# T\n", "'priority'"),
        ("---\npriority: true\n---\n# T\n", "'priority'"),
        ("---\nmax_attempts: 0\n---\n# T\n", "'max_attempts'"),
        ("---\nmax_attempts: yes\n---\n# T\n", "'max_attempts'"),
        ("---\ntimeout: soon\n---\n# T\n", "'timeout'"),
        ("---\ntimeout: 0\n---\n# T\n", "'timeout'"),
        ("---\nenabled: maybe\n---\n# T\n", "'enabled'"),
        ("---\ndepends_on: {a: 1}\n---\n# T\n", "'depends_on'"),
        ("---\ntitle: [a, b]\n---\n# T\n", "'title'"),
        ("---\nid: my task\n---\n# T\n", "'id'"),
        ("---\nid: a//b\n---\n# T\n", "'id'"),
        ("---\nid: a/.hidden\n---\n# T\n", "'id'"),
        ("", "empty spec"),
        ("   \n\n", "empty spec"),
        ("---\nid: lonely\ntitle: Only a title\n---\n", "empty spec"),
        ("---\nid: lonely\n---\n\n  \n", "empty spec"),
    ],
)
def test_invalid_spec_names_the_file_and_the_problem(
    tmp_path: Path, content: str, words: str
) -> None:
    """A spec that can't be used is invalid, its reason starting with the file and saying why."""
    invalid = one_invalid(tmp_path, content)
    assert invalid.path == "specs/task.md"
    assert invalid.reason.startswith("specs/task.md: ")
    assert words in invalid.reason


def test_wrong_type_reason_shows_the_value(tmp_path: Path) -> None:
    """A wrong-typed front-matter value is shown in the reason so the user can find it."""
    assert "'high'" in one_invalid(tmp_path, "---\npriority: high\n---\n# T\n").reason


def test_not_utf8_is_invalid(tmp_path: Path) -> None:
    """A spec that isn't UTF-8 is invalid with a reason saying so."""
    invalid = one_invalid(tmp_path, "# Café\n".encode("latin-1"))
    assert invalid.reason.startswith("specs/task.md: not UTF-8")


def test_huge_spec_is_invalid(tmp_path: Path) -> None:
    """A spec over 256 KiB is invalid with its size in the reason; one just under is fine."""
    assert one_spec(tmp_path, "# T\n" + "x" * (MAX_SPEC_BYTES - 4)).id == "task"
    invalid = one_invalid(tmp_path, "# T\n" + "x" * MAX_SPEC_BYTES)
    assert str(MAX_SPEC_BYTES + 4) in invalid.reason and "limit" in invalid.reason


@pytest.mark.parametrize(
    ("relative", "expected_id"),
    [("my task!.md", "my-task!"), ("_draft.md", "_draft")],
)
def test_file_name_that_makes_no_id_is_invalid(
    tmp_path: Path, relative: str, expected_id: str
) -> None:
    """A file name that gives no usable id makes the spec invalid, asking for an `id:`."""
    invalid = one_invalid(tmp_path, "# T\n\nbody\n", relative)
    assert invalid.id == expected_id
    assert "set a plain `id:`" in invalid.reason


def test_file_name_is_fine_when_front_matter_sets_the_id(tmp_path: Path) -> None:
    """An explicit id rescues a file name that would make no id."""
    assert one_spec(tmp_path, "---\nid: draft\n---\n# T\n", "_draft.md").id == "draft"


@pytest.mark.parametrize(
    ("content", "expected_id"),
    [
        ("---\nid: db\npriority: high\n---\n# T\n", "db"),
        ("---\nid: 'db'  # the database\nbogus: 1\n---\n# T\n", "db"),
        ("\ufeff---\nid: db\nbogus: 1\n---\n# T\n", "db"),
        ("---\nid: my task\n---\n# T\n", "task"),
        ("---\nid: db\n", "db"),
        ("# T\n\nid: db\n\n\xff", "task"),
    ],
)
def test_invalid_spec_keeps_its_declared_id(tmp_path: Path, content: str, expected_id: str) -> None:
    """A broken spec still goes by a plain `id:` it declares, so dependents know it's invalid."""
    raw = content.encode("utf-8") if "\xff" not in content else content.encode("latin-1")
    assert one_invalid(tmp_path, raw).id == expected_id


def test_parse_spec_raises_spec_error() -> None:
    """parse_spec raises SpecError (a ValueError) with the reason, without the file name."""
    with pytest.raises(SpecError, match="^unknown front matter key 'bogus'$"):
        parse("---\nbogus: 1\n---\n# T\n")


# --- the specs folder -----------------------------------------------------------------------


def test_duplicate_ids_make_both_copies_invalid(tmp_path: Path) -> None:
    """Two specs with one id are both invalid, each naming the other file."""
    specs = tmp_path / "specs"
    write(specs, "login.md", "# Login\n")
    write(specs, "other/place.md", "---\nid: login\n---\n# Also login\n")
    write(specs, "fine.md", "# Fine\n")
    spec_set = load_specs(specs, "specs/")
    assert [spec.id for spec in spec_set.specs] == ["fine"]
    reasons = {item.path: item.reason for item in spec_set.invalid}
    assert set(reasons) == {"specs/login.md", "specs/other/place.md"}
    assert "duplicate id 'login'" in reasons["specs/login.md"]
    assert reasons["specs/login.md"].endswith("specs/other/place.md")
    assert reasons["specs/other/place.md"].endswith("specs/login.md")


def test_hidden_and_non_markdown_files_are_skipped(tmp_path: Path) -> None:
    """Hidden files, files in hidden folders, non-.md files and folders named *.md are no tasks."""
    specs = tmp_path / "specs"
    write(specs, "real.md", "# Real\n")
    write(specs, "nested/also.md", "# Also\n")
    write(specs, ".draft.md", "# Draft\n")
    write(specs, ".wip/idea.md", "# Idea\n")
    write(specs, "nested/.cache/x.md", "# X\n")
    write(specs, "notes.txt", "# Notes\n")
    write(specs, "README.markdown", "# Readme\n")
    (specs / "folder.md").mkdir()
    spec_set = load_specs(specs, "specs/")
    assert [spec.id for spec in spec_set.specs] == ["nested/also", "real"]
    assert spec_set.invalid == ()


def test_missing_specs_folder_means_no_tasks(tmp_path: Path) -> None:
    """A specs folder that doesn't exist holds no tasks (the CLI reports it, not the loader)."""
    assert load_specs(tmp_path / "nowhere") == SpecSet((), ())


def test_bad_spec_does_not_hide_the_good_ones(tmp_path: Path) -> None:
    """One broken spec among good ones leaves the good ones loaded."""
    specs = tmp_path / "specs"
    write(specs, "a.md", "# A\n")
    write(specs, "b.md", "---\npriority: [\n---\n# B\n")
    write(specs, "c.md", b"\xff\xfe")
    write(specs, "d.md", "# D\n")
    spec_set = load_specs(specs, "specs/")
    assert [spec.id for spec in spec_set.specs] == ["a", "d"]
    assert [item.path for item in spec_set.invalid] == ["specs/b.md", "specs/c.md"]


# --- through the command line ---------------------------------------------------------------


def test_validate_lists_each_problem_and_exits_1(project: Project) -> None:
    """`ralph validate` prints one line per problem, each with its file and reason, and exits 1."""
    project.spec("good")
    project.write("specs/broken.md", "---\npriority: [\n---\n# Broken\n")
    project.spec("typo", bogus=1)
    project.spec("orphan", depends_on=["nowhere"])
    project.commit()
    result = project.ralph("validate", check_code=1)
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert any(line.startswith("specs/broken.md: ") and "YAML" in line for line in lines)
    assert any(line.startswith("specs/typo.md: ") and "'bogus'" in line for line in lines)
    assert any(line.startswith("specs/orphan.md: ") and "nowhere" in line for line in lines)
    assert "3 problem" in result.stderr
    assert "good" not in result.stdout


def test_validate_succeeds_when_all_is_well(project: Project) -> None:
    """`ralph validate` says all is valid and exits 0 when settings and specs are fine."""
    project.spec("one")
    project.spec("two", depends_on=["one"], priority=5)
    project.commit()
    result = project.ralph("validate", check_code=0)
    assert result.stdout.strip() == "settings and specs are valid"


def test_validate_reports_bad_settings(project: Project) -> None:
    """`ralph validate` names a bad setting and exits non-zero instead of crashing."""
    project.spec("one")
    project.configure(max_attempts=0)
    project.commit()
    result = project.ralph("validate")
    assert result.returncode == 1
    assert "max_attempts" in result.stdout + result.stderr


def test_run_once_commits_good_spec_and_reports_the_broken_one(project: Project) -> None:
    """`run --once` commits the good task, reports the broken spec's file and exits 1."""
    project.spec("good")
    project.attempts("good", {"steps": [{"write": "good.txt", "content": "good\n"}]})
    project.write("specs/broken.md", "---\ntitle: [unclosed\n---\n# Broken\n")
    project.commit()
    result = project.ralph("run", "--once", check_code=1)
    assert project.task_commits() == [("good", "1")]
    assert "specs/broken.md" in result.stderr
    status = project.status_json()
    assert status["good"]["state"] == "done"
    assert status["broken"]["state"] == "invalid"
    assert project.git("status", "--porcelain") == ""
