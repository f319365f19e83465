"""Settings: ralph.toml or [tool.ralph], then RALPH_* variables, then flags; durations too."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

from ralph.durations import format_duration, parse_deadline, parse_duration
from ralph.errors import SettingsError
from ralph.settings import Settings, load_settings

CHECKS = 'checks = ["true"]\n'


def settings_in(root: Path, toml: str, **kwargs: Any) -> Settings:
    """Write ralph.toml and load the settings with an empty environment unless given one."""
    (root / "ralph.toml").write_text(toml, encoding="utf-8")
    kwargs.setdefault("environ", {})
    return load_settings(root, **kwargs)


def settings_error(root: Path, toml: str | None, **kwargs: Any) -> str:
    """The message of the SettingsError loading these settings raises."""
    if toml is not None:
        (root / "ralph.toml").write_text(toml, encoding="utf-8")
    kwargs.setdefault("environ", {})
    with pytest.raises(SettingsError) as caught:
        load_settings(root, **kwargs)
    return str(caught.value)


# --- where settings come from ---------------------------------------------------------------


def test_ralph_toml_is_read(tmp_path: Path) -> None:
    """Every key in ralph.toml reaches the settings, durations converted to seconds."""
    settings = settings_in(
        tmp_path,
        'agent = "codex"\nchecks = ["make test", "make lint"]\nspecs_dir = "backlog"\n'
        'memory_file = "NOTES.md"\nmax_attempts = 5\nattempt_timeout = "90s"\n'
        'check_timeout = 30\nkill_grace = "2s"\nprotected = ["secrets/**"]\n'
        'poll_interval = "1m"\n',
    )
    assert settings.agent == "codex"
    assert settings.checks == ["make test", "make lint"]
    assert settings.specs_dir == Path("backlog")
    assert settings.memory_file == Path("NOTES.md")
    assert settings.max_attempts == 5
    assert (settings.attempt_timeout, settings.check_timeout) == (90.0, 30.0)
    assert (settings.kill_grace, settings.poll_interval) == (2.0, 60.0)
    assert settings.protected_globs() == ["backlog/**", "ralph.toml", "NOTES.md", "secrets/**"]


def test_defaults_follow_the_contract(tmp_path: Path) -> None:
    """With only checks set, every other setting has the contract's default."""
    settings = settings_in(tmp_path, CHECKS)
    assert settings.agent == "claude"
    assert settings.specs_dir == Path("specs")
    assert settings.memory_file == Path("AGENTS.md")
    assert settings.max_attempts == 3
    assert settings.attempt_timeout == 30 * 60
    assert settings.check_timeout == 10 * 60
    assert settings.kill_grace == 10
    assert settings.poll_interval == 30
    assert settings.protected_globs() == ["specs/**", "ralph.toml", "AGENTS.md"]


def test_settings_are_frozen(tmp_path: Path) -> None:
    """The settings object can't be changed after it is built."""
    settings = settings_in(tmp_path, CHECKS)
    with pytest.raises(ValueError):
        settings.max_attempts = 9  # type: ignore[misc]


def test_pyproject_tool_ralph_is_used_without_ralph_toml(tmp_path: Path) -> None:
    """Without ralph.toml, the [tool.ralph] table of pyproject.toml holds the settings."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.ralph]\nchecks = ["pytest"]\nmax_attempts = 4\n'
    )
    settings = load_settings(tmp_path, environ={})
    assert (settings.checks, settings.max_attempts) == (["pytest"], 4)


def test_ralph_toml_wins_over_pyproject(tmp_path: Path) -> None:
    """When both exist, ralph.toml is the settings file and [tool.ralph] is not merged in."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ralph]\nchecks = ["pytest"]\nmax_attempts = 4\n'
    )
    settings = settings_in(tmp_path, 'checks = ["make"]\n')
    assert (settings.checks, settings.max_attempts) == (["make"], 3)


def test_pyproject_without_tool_ralph_means_no_settings_file(tmp_path: Path) -> None:
    """A pyproject.toml with no [tool.ralph] gives nothing, so checks are reported missing."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    message = settings_error(tmp_path, None)
    assert "checks" in message and "ralph.toml" in message


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """RALPH_MAX_ATTEMPTS beats max_attempts in ralph.toml."""
    settings = settings_in(
        tmp_path, CHECKS + "max_attempts = 5\n", environ={"RALPH_MAX_ATTEMPTS": "7"}
    )
    assert settings.max_attempts == 7


@pytest.mark.parametrize(
    ("key", "flag", "env", "expected"),
    [
        ("max_attempts", 9, "7", 9),
        ("agent", "gemini", "codex", "gemini"),
        ("max_attempts", None, "7", 7),
        ("agent", None, "codex", "codex"),
    ],
)
def test_flag_overrides_environment(
    tmp_path: Path, key: str, flag: object, env: str, expected: object
) -> None:
    """A flag beats RALPH_<KEY>, which beats the file; a flag of None means it wasn't given."""
    settings = settings_in(
        tmp_path,
        CHECKS + 'max_attempts = 5\nagent = "amp"\n',
        flags={key: flag},
        environ={f"RALPH_{key.upper()}": env},
    )
    assert getattr(settings, key) == expected


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit environ, the process environment is read."""
    monkeypatch.setenv("RALPH_MAX_ATTEMPTS", "6")
    (tmp_path / "ralph.toml").write_text(CHECKS)
    assert load_settings(tmp_path).max_attempts == 6


def test_explicit_environ_leaves_os_environ_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit environ is read instead of os.environ, which is neither read nor changed."""
    monkeypatch.setenv("RALPH_MAX_ATTEMPTS", "6")
    before = dict(os.environ)
    settings = settings_in(tmp_path, CHECKS, environ={"RALPH_AGENT": "amp"})
    assert (settings.max_attempts, settings.agent) == (3, "amp")
    assert dict(os.environ) == before


def test_only_upper_case_ralph_variables_count(tmp_path: Path) -> None:
    """Lower-case ralph_* variables and RALPH_* variables that are no setting are ignored."""
    settings = settings_in(
        tmp_path,
        CHECKS,
        environ={"ralph_max_attempts": "7", "RALPH_TASK_ID": "x", "RALPH_ATTEMPT": "1"},
    )
    assert settings.max_attempts == 3


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("checks", '["make test"]', ["make test"]),
        ("checks", '["make test", "make lint"]', ["make test", "make lint"]),
        ("protected", '["secrets/**"]', ["secrets/**"]),
        ("append_only", "[]", []),
    ],
)
def test_lists_from_the_environment_are_json(
    tmp_path: Path, key: str, value: str, expected: list[str]
) -> None:
    """A list setting in a RALPH_* variable is written as a JSON array."""
    settings = settings_in(tmp_path, CHECKS, environ={f"RALPH_{key.upper()}": value})
    assert getattr(settings, key) == expected


def test_checks_may_come_from_the_environment_alone(tmp_path: Path) -> None:
    """With no settings file at all, RALPH_CHECKS is enough."""
    settings = load_settings(tmp_path, environ={"RALPH_CHECKS": '["make test"]'})
    assert settings.checks == ["make test"]


@pytest.mark.parametrize("value", ["make test", '"make test"', '{"a": 1}', "[unclosed", ""])
def test_a_list_variable_that_is_not_a_json_list_is_an_error(tmp_path: Path, value: str) -> None:
    """RALPH_CHECKS that isn't a JSON array is an error naming the key, the variable and JSON."""
    message = settings_error(tmp_path, CHECKS, environ={"RALPH_CHECKS": value})
    assert message.startswith("checks: ")
    assert "RALPH_CHECKS" in message and "JSON list" in message


# --- wrong settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "toml", "label"),
    [
        ("ralph.toml", CHECKS + "colour = 1\n", "ralph.toml"),
        ("ralph.toml", CHECKS + "[colour]\nx = 1\n", "ralph.toml"),
        ("pyproject.toml", "[tool.ralph]\n" + CHECKS + "colour = 1\n", "pyproject.toml"),
    ],
)
def test_unknown_key_names_the_key_and_the_file(
    tmp_path: Path, filename: str, toml: str, label: str
) -> None:
    """An unknown key in the settings file is an error naming the key and the file."""
    (tmp_path / filename).write_text(toml)
    message = settings_error(tmp_path, None)
    assert "colour" in message and "unknown setting" in message and label in message


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("file", "ralph.toml"),
        ("env", "environment variable RALPH_ATTEMPT_TIMEOUT"),
        ("flag", "flag --attempt-timeout"),
    ],
)
def test_bad_duration_names_the_key_and_the_source(tmp_path: Path, where: str, source: str) -> None:
    """A bad duration is an error naming the key and the file, variable or flag it came from."""
    toml = CHECKS + ('attempt_timeout = "soon"\n' if where == "file" else "")
    environ = {"RALPH_ATTEMPT_TIMEOUT": "soon"} if where == "env" else {}
    flags = {"attempt_timeout": "soon"} if where == "flag" else {}
    message = settings_error(tmp_path, toml, environ=environ, flags=flags)
    assert message.startswith("attempt_timeout: ")
    assert "soon" in message and source in message


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("", "checks", "required"),
        ("checks = []\n", "checks", "at least one"),
        ('checks = ["true", "  "]\n', "checks", "empty"),
        ('checks = "make test"\n', "checks", "list"),
        (CHECKS + "max_attempts = 0\n", "max_attempts", "greater than or equal to 1"),
        (CHECKS + "max_attempts = true\n", "max_attempts", "true/false"),
        (CHECKS + 'max_attempts = "three"\n', "max_attempts", "integer"),
        (CHECKS + 'agent = "bogus"\n', "agent", "claude"),
        (CHECKS + 'specs_dir = "../elsewhere"\n', "specs_dir", "inside the repository"),
        (CHECKS + 'memory_file = "/etc/AGENTS.md"\n', "memory_file", "inside the repository"),
        (CHECKS + "kill_grace = 0\n", "kill_grace", "more than zero"),
        (CHECKS + "memory_budget = 10\n", "memory_budget", "1024"),
    ],
)
def test_wrong_value_names_the_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    """A missing or wrong value is an error that starts with the key and says what is wrong."""
    message = settings_error(tmp_path, toml)
    assert message.startswith(f"{key}: ")
    assert words in message
    assert "ralph.toml" in message


def test_every_wrong_value_is_reported_at_once(tmp_path: Path) -> None:
    """Several wrong settings are all named in one message, not one per run."""
    message = settings_error(tmp_path, 'checks = []\nmax_attempts = 0\nbogus = "x"\n')
    assert all(key in message for key in ("checks", "max_attempts", "bogus"))


@pytest.mark.parametrize("filename", ["ralph.toml", "pyproject.toml"])
def test_invalid_toml_names_the_file(tmp_path: Path, filename: str) -> None:
    """A settings file that isn't TOML is an error naming that file."""
    (tmp_path / filename).write_text('checks = ["true"\nagent = \n')
    message = settings_error(tmp_path, None)
    assert message.startswith(f"{filename}: not valid TOML")


def test_settings_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    """A settings file that isn't UTF-8 is an error naming the file, not a traceback."""
    (tmp_path / "ralph.toml").write_bytes(b'checks = ["\xff"]\n')
    assert settings_error(tmp_path, None).startswith("ralph.toml: ")


@pytest.mark.parametrize(
    ("toml", "flags", "key", "source"),
    [
        (CHECKS + 'agent = "command"\n', {}, "agent_command", "ralph.toml"),
        (CHECKS + 'agent = "command"\nagent_command = "  "\n', {}, "agent_command", "ralph.toml"),
        (CHECKS + 'agent = "scripted"\n', {}, "agent_script", "ralph.toml"),
        (CHECKS, {"agent": "command"}, "agent_command", "flag --agent"),
    ],
)
def test_agent_without_what_it_needs(
    tmp_path: Path, toml: str, flags: dict[str, str], key: str, source: str
) -> None:
    """The command agent needs agent_command and the scripted agent agent_script."""
    message = settings_error(tmp_path, toml, flags=flags)
    assert message.startswith(f"{key}: required")
    assert source in message


def test_command_agent_with_its_command_is_fine(tmp_path: Path) -> None:
    """agent = "command" with agent_command set loads."""
    settings = settings_in(tmp_path, CHECKS + 'agent = "command"\nagent_command = "my-agent"\n')
    assert settings.agent_command == "my-agent"


# --- durations and deadlines ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("1d", 86400),
        ("500ms", 0.5),
        ("1.5h", 5400),
        (" 2H ", 7200),
        ("45", 45),
        ("0.5", 0.5),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_durations_users_write(value: object, seconds: float) -> None:
    """Durations are seconds, or numbers with s, m, h, d or ms units, combined in order."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["0", 0, "-1", -1, "0s", "abc", "", "1x", "h", "1h-5m", "1 2", "nan", "inf", True, None, [1]],
)
def test_bad_durations_are_errors_naming_the_value(value: object) -> None:
    """Zero, negative, non-finite and unparsable durations raise ValueError naming the value."""
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(45, "45s"), (0.5, "0.5s"), (90, "1m30s"), (5400, "1h30m"), (7200, "2h")]
)
def test_format_duration_writes_what_users_write(seconds: float, text: str) -> None:
    """Seconds are shown the way they'd be written in ralph.toml, and read back the same."""
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


NOW = datetime(2030, 5, 17, 12, 0, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        ("06:00", NOW.replace(hour=5, minute=0), NOW.replace(hour=6, minute=0)),
        ("06:00", NOW.replace(hour=7, minute=0), NOW.replace(day=18, hour=6, minute=0)),
        ("06:00", NOW.replace(hour=6, minute=0), NOW.replace(day=18, hour=6, minute=0)),
        ("6:30", NOW, NOW.replace(day=18, hour=6, minute=30)),
        ("23:59", NOW, NOW.replace(hour=23, minute=59)),
        ("6h", NOW, NOW + timedelta(hours=6)),
        ("90m", NOW, NOW + timedelta(minutes=90)),
    ],
)
def test_deadline_is_next_time_of_day_or_a_duration_from_now(
    text: str, now: datetime, expected: datetime
) -> None:
    """A clock time is its next occurrence (tomorrow once passed); a duration counts from now."""
    assert parse_deadline(text, now) == expected


@pytest.mark.parametrize(
    "text", ["tomorrow", "", "24:00", "6:60", "06:00pm", "-1h", "inf", "99999999999999h"]
)
def test_bad_deadline_is_a_value_error(text: str) -> None:
    """A deadline that is neither a time of day nor a duration raises ValueError naming it."""
    with pytest.raises(ValueError, match="bad deadline"):
        parse_deadline(text, NOW)


# --- through the command line ---------------------------------------------------------------


def git_state(project: Project) -> tuple[str, str, str]:
    """HEAD, the porcelain status and .git/info/exclude: what a refused run must not change."""
    exclude = project.root / ".git" / "info" / "exclude"
    text = exclude.read_text() if exclude.exists() else ""
    return project.head(), project.git("status", "--porcelain", "--ignored"), text


@pytest.mark.parametrize(
    ("settings", "args", "env", "key", "source"),
    [
        ({"colour": "blue"}, [], {}, "colour", "ralph.toml"),
        ({"checks": []}, [], {}, "checks", "ralph.toml"),
        ({"attempt_timeout": "soon"}, [], {}, "attempt_timeout", "ralph.toml"),
        ({}, [], {"RALPH_ATTEMPT_TIMEOUT": "soon"}, "attempt_timeout", "RALPH_ATTEMPT_TIMEOUT"),
        ({}, [], {"RALPH_CHECKS": "make test"}, "checks", "RALPH_CHECKS"),
        ({}, ["--max-attempts", "0"], {}, "max_attempts", "flag --max-attempts"),
        ({}, ["--agent", "bogus"], {}, "agent", "flag --agent"),
        ({}, ["--agent", "command"], {}, "agent_command", "flag --agent"),
    ],
)
def test_bad_setting_stops_run_with_exit_2_before_touching_anything(
    project: Project,
    settings: dict[str, Any],
    args: list[str],
    env: dict[str, str],
    key: str,
    source: str,
) -> None:
    """A bad setting makes `run --once` exit 2 naming key and source, with nothing touched."""
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hi\n"}]})
    project.configure(**settings)
    project.commit()
    before = git_state(project)
    result = project.ralph("run", "--once", *args, env=env, check_code=2)
    assert key in result.stderr and source in result.stderr
    assert not (project.root / ".ralph").exists()
    assert git_state(project) == before
    assert project.task_commits() == []


def test_missing_checks_stops_run_with_exit_2(project: Project) -> None:
    """A ralph.toml without checks makes `run --once` exit 2 and say checks are required."""
    project.spec("greet")
    project.commit()
    project.write("ralph.toml", 'agent = "scripted"\nagent_script = "x.toml"\n')
    project.git("commit", "-qam", "no checks")
    result = project.ralph("run", "--once", check_code=2)
    assert "checks" in result.stderr and "required" in result.stderr
    assert not (project.root / ".ralph").exists()


@pytest.mark.parametrize(
    ("args", "env", "attempts"),
    [
        ([], {}, 3),
        ([], {"RALPH_MAX_ATTEMPTS": "2"}, 2),
        (["--max-attempts", "1"], {"RALPH_MAX_ATTEMPTS": "2"}, 1),
    ],
)
def test_run_takes_max_attempts_from_file_then_env_then_flag(
    project: Project, args: list[str], env: dict[str, str], attempts: int
) -> None:
    """`ralph run` uses the file's max_attempts unless RALPH_MAX_ATTEMPTS or the flag says else."""
    project.spec("never")
    project.attempts("never", {"steps": [{"write": "x.txt", "content": "x\n"}], "exit": 1})
    project.configure(max_attempts=3)
    project.commit()
    project.ralph("run", "--once", *args, env=env, check_code=1)
    task = project.status_json()["never"]
    assert (task["state"], task["attempts"]) == ("failed", attempts)


def test_unknown_ralph_variable_stops_ralph(project: Project) -> None:
    """A misspelt RALPH_* variable is an unknown setting (exit 2), not silently ignored."""
    project.spec("task")
    project.commit()
    result = project.ralph("run", "--once", env={"RALPH_MAX_ATEMPTS": "5"})
    assert result.returncode == 2
    assert "max_atempts" in result.stderr and "RALPH_MAX_ATEMPTS" in result.stderr


def test_validate_reports_an_agent_that_cannot_run(project: Project) -> None:
    """ralph validate lists an agent executable that is not on PATH."""
    project.configure(agent="command", agent_command="no-such-agent-cli --go")
    project.commit()
    result = project.ralph("validate")
    assert result.returncode == 1
    assert "no-such-agent-cli" in result.stdout
