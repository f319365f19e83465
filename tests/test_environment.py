"""The agent's environment is an allowlist: what programs need, the preset's own keys,
ralph's variables but the queue and tokens, then agent_env and pass_env; nothing else."""

from __future__ import annotations

import subprocess
import typing
from pathlib import Path

import pytest

from ralph.agents import keys
from ralph.agents.keys import allowlisted, environment_report, home_binds, secret_values
from ralph.runtime.sandbox import Bind
from ralph.settings import AgentName

HOST = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/u",
    "USER": "u",
    "LOGNAME": "u",
    "SHELL": "/bin/bash",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "TZ": "UTC",
    "TERM": "xterm",
    "COLORTERM": "truecolor",
    "NO_COLOR": "1",
    "TMPDIR": "/tmp",
    "HTTPS_PROXY": "http://proxy:3128",
    "https_proxy": "http://proxy:3128",
    "NO_PROXY": "localhost",
    "SSL_CERT_FILE": "/etc/ssl/ca.pem",
    "NODE_EXTRA_CA_CERTS": "/etc/ssl/extra.pem",
    "VIRTUAL_ENV": "/home/u/proj/.venv",
    "ANTHROPIC_API_KEY": "anthropic-key",
    "CLAUDE_CODE_OAUTH_TOKEN": "claude-oauth",
    "OPENAI_API_KEY": "openai-key",
    "GEMINI_API_KEY": "gemini-key",
    "AMP_API_KEY": "amp-key",
    "AWS_ACCESS_KEY_ID": "aws-id",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
    "GITHUB_TOKEN": "ghp-token",
    "SSH_AUTH_SOCK": "/run/user/1000/ssh-agent",
    "DATABASE_URL": "postgres://u:p@db/app",
    "PGPASSWORD": "pg",
    "CLAUDECODE": "1",
    "CLAUDE_CODE_ENTRYPOINT": "cli",
    "RALPH_TASK_ID": "t1",
    "RALPH_WORKER": "0",
    "RALPH_CHECKS": '["make test"]',
    "RALPH_QUEUE": "postgresql://u:p@db/ralph",
    "RALPH_OTEL_TOKEN": "otel",
    "RALPH_SOMETHING": "https://user:pw@example.org/x",
}

ALWAYS = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "TZ",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "TMPDIR",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "VIRTUAL_ENV",
    "RALPH_TASK_ID",
    "RALPH_WORKER",
    "RALPH_CHECKS",
}
NEVER = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GITHUB_TOKEN",
    "SSH_AUTH_SOCK",
    "DATABASE_URL",
    "PGPASSWORD",
    "RALPH_QUEUE",
    "RALPH_OTEL_TOKEN",
    "RALPH_SOMETHING",
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
}
OWN_KEYS = {
    "claude": {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"},
    "codex": {"OPENAI_API_KEY"},
    "gemini": {"GEMINI_API_KEY"},
    "opencode": {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"},
    "amp": {"AMP_API_KEY"},
    "aider": {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"},
    "command": set(),
    "scripted": set(),
}
ALL_KEYS = set().union(*OWN_KEYS.values())


def test_every_preset_says_what_it_needs() -> None:
    """Each agent ralph can run has an entry in the table of keys (none forgotten)."""
    assert set(keys.PRESETS) == set(typing.get_args(AgentName)) == set(OWN_KEYS)


@pytest.mark.parametrize("preset", sorted(OWN_KEYS))
def test_a_preset_gets_its_own_keys_and_no_one_elses(preset: str) -> None:
    """A preset's environment: what every program needs, its own API keys, ralph's
    variables; never cloud credentials, tokens, sockets, database URLs or the queue."""
    env = allowlisted(HOST, preset, {}, [])
    assert set(env) >= ALWAYS | OWN_KEYS[preset]
    assert not (ALL_KEYS - OWN_KEYS[preset]) & set(env)
    assert not NEVER & set(env)
    assert all(env[name] == HOST[name] for name in env)


def test_agent_env_is_set_last_and_wins() -> None:
    """agent_env adds variables and overrides inherited ones."""
    env = allowlisted(HOST, "claude", {"ANTHROPIC_API_KEY": "from-settings", "X": "1"}, [])
    assert env["ANTHROPIC_API_KEY"] == "from-settings"
    assert env["X"] == "1"


@pytest.mark.parametrize(
    ("pass_env", "passed"),
    [
        (["GITHUB_TOKEN"], {"GITHUB_TOKEN"}),
        (["AWS_*"], {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}),
        (["PG*", "SSH_AUTH_SOCK"], {"PGPASSWORD", "SSH_AUTH_SOCK"}),
        (["github_token"], set()),  # names are case-sensitive, as the environment is
    ],
)
def test_pass_env_adds_names_and_globs(pass_env: list[str], passed: set[str]) -> None:
    """pass_env lets through the named variables and those a glob matches, nothing else."""
    env = allowlisted(HOST, "codex", {}, pass_env)
    assert set(env) & NEVER == passed


def test_a_ralph_variable_with_a_url_or_a_token_is_withheld() -> None:
    """RALPH_* passes, but the queue, a name saying token/secret/url and a URL value don't."""
    environ = {
        "RALPH_MODEL": "sonnet",
        "RALPH_QUEUE": "x",
        "RALPH_API_KEY": "k",
        "RALPH_DB_URL": "x",
        "RALPH_FOO": "postgres://h/db",
        "RALPH_SECURITY_NOTE": "plain",
    }
    assert set(allowlisted(environ, "scripted", {}, [])) == {"RALPH_MODEL", "RALPH_SECURITY_NOTE"}


def test_the_doctor_sees_names_never_values() -> None:
    """The report lists what is passed and withheld by name; no value appears in it."""
    report = environment_report(HOST, "claude", {"FROM_SETTINGS": "v"}, ["GITHUB_TOKEN"])
    assert "GITHUB_TOKEN" in report.passed and "ANTHROPIC_API_KEY" in report.passed
    assert "AWS_SECRET_ACCESS_KEY" in report.withheld and "RALPH_QUEUE" in report.withheld
    assert report.from_settings == ("FROM_SETTINGS",)
    assert set(report.passed) | set(report.withheld) == set(HOST)
    shown = repr(report)
    assert not any(value in shown for value in HOST.values() if len(value) > 3)


def test_a_child_started_with_it_sees_only_the_allowlist() -> None:
    """A real process started with the allowlisted environment sees nothing else."""
    env = allowlisted({**HOST, "PATH": "/usr/bin:/bin"}, "codex", {}, [])
    printed = subprocess.run(["env"], env=env, capture_output=True, text=True, check=True)
    names = {line.split("=", 1)[0] for line in printed.stdout.splitlines()}
    assert names == set(env)
    assert "aws-secret" not in printed.stdout and "ghp-token" not in printed.stdout


def test_the_claude_preset_binds_its_folder_writable_and_its_settings_read_only() -> None:
    """~/.claude and ~/.claude.json are writable; the files that steer later sessions in it
    (settings, hooks, memory) are read-only."""
    home = Path("/home/u")
    binds = home_binds("claude", home, {})
    assert Bind(home / ".claude", "rw") in binds
    assert Bind(home / ".claude.json", "rw") in binds
    assert Bind(home / ".claude" / "settings.json", "ro") in binds
    assert Bind(home / ".claude" / "CLAUDE.md", "ro") in binds


@pytest.mark.parametrize(
    ("preset", "environ", "expected"),
    [
        ("claude", {"CLAUDE_CONFIG_DIR": "/cfg/claude"}, Bind(Path("/cfg/claude"), "rw")),
        (
            "claude",
            {"CLAUDE_CONFIG_DIR": "/cfg/claude"},
            Bind(Path("/cfg/claude/.claude.json"), "rw"),
        ),
        ("codex", {"CODEX_HOME": "/cfg/codex"}, Bind(Path("/cfg/codex/config.toml"), "ro")),
        (
            "opencode",
            {"XDG_CONFIG_HOME": "/cfg"},
            Bind(Path("/cfg/opencode/opencode.json"), "ro"),
        ),
        ("opencode", {"XDG_DATA_HOME": "/data"}, Bind(Path("/data/opencode"), "rw")),
        ("gemini", {}, Bind(Path("/home/u/.gemini"), "rw")),
        ("amp", {}, Bind(Path("/home/u/.config/amp/settings.json"), "ro")),
        ("aider", {}, Bind(Path("/home/u/.aider.conf.yml"), "ro")),
        ("codex", {"SSL_CERT_FILE": "/home/u/ca.pem"}, Bind(Path("/home/u/ca.pem"), "ro")),
    ],
)
def test_moved_folders_and_named_files_are_followed(
    preset: str, environ: dict[str, str], expected: Bind
) -> None:
    """CLAUDE_CONFIG_DIR, CODEX_HOME and XDG_*_HOME move a preset's folders; files named by
    passed variables (CA bundles) are bound read-only."""
    assert expected in home_binds(preset, Path("/home/u"), environ)


def test_sandbox_paths_come_last_with_home_expanded() -> None:
    """sandbox_paths: ``~/`` is the home directory, and their access is the last word."""
    binds = home_binds("claude", Path("/home/u"), {}, {"~/.claude": "ro", "/opt/sdk": "ro"})
    assert binds[-2:] == (Bind(Path("/home/u/.claude"), "ro"), Bind(Path("/opt/sdk"), "ro"))


def test_no_preset_needs_a_cloud_or_forge_credential() -> None:
    """No preset lets AWS keys, GITHUB_TOKEN or a database URL through by its own patterns."""
    for preset in keys.PRESETS:
        env = allowlisted(HOST, preset, {}, [])
        assert not {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DATABASE_URL"} & set(env), preset


def test_the_keys_the_agent_gets_are_what_the_secret_scan_looks_for() -> None:
    """The passed variables holding keys and tokens (by name) are handed to the secret scan;
    endpoints, models and paths are not."""
    env = allowlisted(
        {**HOST, "ANTHROPIC_BASE_URL": "https://gw", "ANTHROPIC_MODEL": "m"}, "claude", {}, []
    )
    assert set(secret_values(env)) == {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"}
