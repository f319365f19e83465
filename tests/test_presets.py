"""Agent presets: the command line each CLI gets, and what ralph reads in its recorded output."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import to_toml

from ralph.agents import (
    Agent,
    AgentReport,
    AgentRun,
    agent_environment,
    available,
    make_agent,
)
from ralph.outcome import Reason
from ralph.settings import load_settings

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
PRESETS = ["claude", "codex", "gemini", "opencode", "amp", "aider"]
ALL_AGENTS = [*PRESETS, "command", "scripted"]

# 07:00 in New York, 21:00 in Tokyo (the local zone while reports are read).
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# Each preset's own environment for its CLI.
PRESET_ENV: dict[str, dict[str, str]] = {
    "claude": {"IS_SANDBOX": "1"} if os.geteuid() == 0 else {},
    "codex": {},
    "gemini": {"GEMINI_CLI_TRUST_WORKSPACE": "true"},
    "opencode": {"OPENCODE_PERMISSION": '{"*":"allow"}', "OPENCODE_DISABLE_AUTOUPDATE": "1"},
    "amp": {},
    "aider": {},
}

# What an agent CLI sets for its own children, and so what ralph inherits when it runs under one.
NESTED = {
    "CLAUDECODE": "1",
    "CLAUDE_CODE_ENTRYPOINT": "cli",
    "CLAUDE_CODE_SESSION_ID": "5f0c8a52-1f8e-4c1e-9a43-0c2b7f6d9e11",
    "CLAUDE_CODE_SSE_PORT": "41117",
}


def agent_for(root: Path, **settings: Any) -> Agent:
    """The agent ralph makes for a ralph.toml with ``checks = ["true"]`` and ``settings``."""
    (root / "ralph.toml").write_text(to_toml({"checks": ["true"], **settings}), encoding="utf-8")
    return make_agent(load_settings(root, environ={}), root)


def any_agent(root: Path, name: str, **settings: Any) -> Agent:
    """Agent ``name``, with the command line or script that ``command`` or ``scripted`` need."""
    if name == "command":
        settings.setdefault("agent_command", "my-agent --fast")
    if name == "scripted":
        (root / "script.toml").write_text("[tasks]\n", encoding="utf-8")
        settings.setdefault("agent_script", "script.toml")
    return agent_for(root, agent=name, **settings)


def own_flags(name: str, prompt_file: Path) -> tuple[list[str], str]:
    """The preset's command line before any model and ``agent_args``, and its model flag."""
    history = prompt_file.parent
    flags = {
        "claude": (
            [
                "claude",
                "--print",
                "--output-format",
                "stream-json",
                "--verbose",
                "--include-partial-messages",
                "--dangerously-skip-permissions",
            ],
            "--model",
        ),
        "codex": (
            [
                "codex",
                "exec",
                "--json",
                "--dangerously-bypass-approvals-and-sandbox",
                "--skip-git-repo-check",
            ],
            "--model",
        ),
        "gemini": (
            ["gemini", "--approval-mode", "yolo", "--output-format", "stream-json"],
            "--model",
        ),
        "opencode": (["opencode", "run", "--format", "json"], "--model"),
        "amp": (["amp", "--execute", "--stream-json", "--dangerously-allow-all"], "--mode"),
        "aider": (
            [
                "aider",
                "--message-file",
                str(prompt_file),
                "--yes-always",
                "--no-auto-commits",
                "--no-dirty-commits",
                "--no-gitignore",
                "--no-check-update",
                "--analytics-disable",
                "--no-show-model-warnings",
                "--no-detect-urls",
                "--no-suggest-shell-commands",
                "--no-pretty",
                "--no-stream",
                "--no-fancy-input",
                "--chat-history-file",
                str(history / "aider.chat.history.md"),
                "--input-history-file",
                str(history / "aider.input.history"),
            ],
            "--model",
        ),
    }
    return flags[name]


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    """A prompt in the attempt's folder, outside the repository."""
    path = tmp_path / "attempts" / "t1-1" / "prompt.md"
    path.parent.mkdir(parents=True)
    path.write_text("Add a --version flag.\n", encoding="utf-8")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The repository root the agent works in."""
    root = tmp_path / "repo"
    root.mkdir()
    return root


# --- command lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize(
    ("model", "agent_args"),
    [
        pytest.param(None, [], id="defaults"),
        pytest.param("smart-model", [], id="model"),
        pytest.param("smart-model", ["--extra", "two words"], id="model-and-args"),
        pytest.param(None, ["--extra"], id="args"),
    ],
)
def test_preset_command_line(
    repo: Path, prompt_file: Path, name: str, model: str | None, agent_args: list[str]
) -> None:
    """The argv is the preset's flags, then its model flag, then agent_args (codex: then "-")."""
    settings: dict[str, Any] = {"agent_args": agent_args}
    if model:
        settings["model"] = model
    command = agent_for(repo, agent=name, **settings).command(prompt_file)
    flags, model_flag = own_flags(name, prompt_file)
    model_part = [model_flag, model] if model else []
    last = ["-"] if name == "codex" else []
    assert command.argv == [*flags, *model_part, *agent_args, *last]


@pytest.mark.parametrize("name", PRESETS)
def test_prompt_delivery(repo: Path, prompt_file: Path, name: str) -> None:
    """Every preset reads the prompt file on stdin, except aider, which is given its path."""
    command = agent_for(repo, agent=name).command(prompt_file)
    if name == "aider":
        assert command.stdin is None
        assert command.argv[1:3] == ["--message-file", str(prompt_file)]
    else:
        assert command.stdin == prompt_file
        assert str(prompt_file) not in command.argv


@pytest.mark.parametrize("name", PRESETS)
def test_preset_environment(repo: Path, prompt_file: Path, name: str) -> None:
    """Each preset sets its own variables: IS_SANDBOX only as root, trust and permission ones."""
    assert agent_for(repo, agent=name).command(prompt_file).env == PRESET_ENV[name]


@pytest.mark.parametrize("name", PRESETS)
def test_agent_env_is_applied_last(repo: Path, prompt_file: Path, name: str) -> None:
    """agent_env is added to the preset's variables and wins where both set one."""
    agent_env = {
        "IS_SANDBOX": "0",
        "GEMINI_CLI_TRUST_WORKSPACE": "false",
        "OPENCODE_PERMISSION": '{"*":"ask"}',
        "HTTPS_PROXY": "http://proxy.invalid:3128",
    }
    command = agent_for(repo, agent=name, agent_env=agent_env).command(prompt_file)
    assert command.env == {**PRESET_ENV[name], **agent_env}


@pytest.mark.parametrize("name", ALL_AGENTS)
def test_nested_agent_variables_are_not_inherited(repo: Path, prompt_file: Path, name: str) -> None:
    """The agent's environment is ralph's without Claude Code's nesting markers, plus its own."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/home/dev", **NESTED}
    command = any_agent(repo, name).command(prompt_file)
    assert agent_environment(base, command) == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/dev",
        **command.env,
    }


@pytest.mark.parametrize(
    ("name", "program"),
    [
        ("claude", "claude"),
        ("codex", "codex"),
        ("gemini", "gemini"),
        ("opencode", "opencode"),
        ("amp", "amp"),
        ("aider", "aider"),
        ("command", "my-agent"),
        ("scripted", sys.executable),
    ],
)
def test_executable(repo: Path, name: str, program: str) -> None:
    """The program doctor looks for is the CLI's own name, the command's first word, or Python."""
    assert any_agent(repo, name).executable() == program


def test_every_agent_is_available() -> None:
    """The registry knows the six CLI presets, the command agent and the scripted agent."""
    assert available() == sorted(ALL_AGENTS)


@pytest.mark.parametrize("name", ALL_AGENTS)
def test_excludes(repo: Path, name: str) -> None:
    """Only aider writes files of its own in the repository, all named .aider*."""
    expected = ["/.aider*"] if name == "aider" else []
    assert any_agent(repo, name).excludes() == expected


def test_aider_history_stays_out_of_the_repository(repo: Path, prompt_file: Path) -> None:
    """Aider's chat and input history go to the prompt's folder, not the repository."""
    argv = agent_for(repo, agent="aider").command(prompt_file).argv
    chat = argv[argv.index("--chat-history-file") + 1]
    typed = argv[argv.index("--input-history-file") + 1]
    assert Path(chat).parent == Path(typed).parent == prompt_file.parent
    assert not any(word.startswith(str(repo)) for word in argv)


@pytest.mark.parametrize(
    ("agent_command", "argv", "on_stdin"),
    [
        pytest.param(
            "my-agent --prompt {prompt_file} --fast",
            ["my-agent", "--prompt", "{prompt_file}", "--fast", "--extra"],
            False,
            id="word",
        ),
        pytest.param(
            "my-agent --prompt={prompt_file}",
            ["my-agent", "--prompt={prompt_file}", "--extra"],
            False,
            id="inside-word",
        ),
        pytest.param(
            "my-agent --flag 'two words'",
            ["my-agent", "--flag", "two words", "--extra"],
            True,
            id="stdin",
        ),
    ],
)
def test_command_agent(
    repo: Path, prompt_file: Path, agent_command: str, argv: list[str], on_stdin: bool
) -> None:
    """{prompt_file} becomes the prompt's path; without it the prompt goes to stdin."""
    agent = agent_for(repo, agent="command", agent_command=agent_command, agent_args=["--extra"])
    command = agent.command(prompt_file)
    assert command.argv == [word.replace("{prompt_file}", str(prompt_file)) for word in argv]
    assert command.stdin == (prompt_file if on_stdin else None)


def test_scripted_agent_runs_the_script_with_python(repo: Path, prompt_file: Path) -> None:
    """The scripted agent is ``python -m ralph.scripted <script>``, the script's full path."""
    command = any_agent(repo, "scripted").command(prompt_file)
    assert command.argv == [sys.executable, "-m", "ralph.scripted", str(repo / "script.toml")]
    assert command.stdin is None


# --- reading recorded output ------------------------------------------------------------------


@pytest.fixture
def local_time_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the machine's local time zone Asia/Tokyo (UTC+9, no daylight saving)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def recorded(fixture: str, exit_code: int | None, outcome: str = "exited") -> AgentRun:
    """A finished run whose output is the recorded fixture file."""
    log_path = FIXTURES / fixture
    return AgentRun(outcome, exit_code, log_path, log_path.read_text(encoding="utf-8"))


AUTH = Reason.AUTH
LIMIT = Reason.USAGE_LIMIT
OUTAGE = Reason.API_OUTAGE


@pytest.mark.usefixtures("local_time_in_tokyo")
@pytest.mark.parametrize(
    ("name", "run", "expected"),
    [
        pytest.param(
            "claude",
            recorded("claude-success.jsonl", 0),
            AgentReport(27810, 300, 0.1275, 3, "Added the parser; all tests pass."),
            id="claude-success",
        ),
        pytest.param(
            "claude",
            recorded("claude-overloaded.jsonl", 1),
            AgentReport(
                0,
                0,
                0.0,
                1,
                "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try "
                "again in a moment. If it persists, check https://status.claude.com/.",
                OUTAGE,
                None,
                "API Error: 529 Overloaded.",
            ),
            id="claude-529",
        ),
        pytest.param(
            "claude",
            recorded("claude-usage-limit.jsonl", 1),
            AgentReport(
                0,
                0,
                0.0,
                1,
                "You've hit your limit · resets 10pm (America/New_York)",
                LIMIT,
                datetime(2026, 11, 24, 3, 0, tzinfo=UTC),
                "You've hit your limit",
            ),
            id="claude-429-resets-at",
        ),
        pytest.param(
            "claude",
            recorded("claude-usage-limit-text-only.jsonl", 1),
            AgentReport(
                0,
                0,
                0.0,
                1,
                "You've hit your session limit · resets 8:30pm (Asia/Tokyo)",
                LIMIT,
                datetime(2026, 11, 24, 11, 30, tzinfo=UTC),
                "You've hit your session limit",
            ),
            id="claude-limit-text",
        ),
        pytest.param(
            "claude",
            recorded("claude-auth.jsonl", 1),
            AgentReport(
                0, 0, 0.0, 1, "Invalid API key · Please run /login", AUTH, None, "Invalid API key"
            ),
            id="claude-401",
        ),
        pytest.param(
            "claude",
            recorded("claude-401-retrying.jsonl", 1),
            AgentReport(
                0,
                0,
                0.0,
                1,
                "Invalid API key · Fix external API key",
                AUTH,
                None,
                "Invalid API key",
            ),
            id="claude-401-after-retries",
        ),
        pytest.param(
            "claude",
            recorded("claude-partial-messages.jsonl", None, outcome="timeout"),
            AgentReport(),
            id="claude-partial-messages-timeout",
        ),
        pytest.param(
            "claude",
            recorded("claude-killed.jsonl", None, outcome="timeout"),
            AgentReport(),
            id="claude-timeout",
        ),
        pytest.param(
            "codex",
            recorded("codex-success.jsonl", 0),
            AgentReport(1220, 95, None, 2, "Done: hello.txt says hi."),
            id="codex-success",
        ),
        pytest.param(
            "codex",
            recorded("codex-usage-limit.jsonl", 1),
            AgentReport(
                failure=LIMIT,
                retry_at=datetime(2026, 11, 23, 14, 1, tzinfo=UTC),
                detail="You’ve hit your usage limit.",
            ),
            id="codex-usage-limit",
        ),
        pytest.param(
            "codex",
            recorded("codex-unauthorized.jsonl", 1),
            AgentReport(failure=AUTH, detail="unexpected status 401 Unauthorized"),
            id="codex-401",
        ),
        pytest.param(
            "codex",
            recorded("codex-401-reconnecting.jsonl", 1),
            AgentReport(failure=AUTH, detail="unexpected status 401 Unauthorized"),
            id="codex-401-after-reconnects",
        ),
        pytest.param(
            "codex",
            recorded("codex-429-rate-limit.jsonl", 1),
            AgentReport(failure=LIMIT, detail="last status: 429 Too Many Requests"),
            id="codex-429",
        ),
        pytest.param(
            "codex",
            recorded("codex-reconnected.jsonl", 0),
            AgentReport(900, 40, None, 1, "Done."),
            id="codex-reconnected",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-success.jsonl", 0),
            AgentReport(14800, 430, None, None, "Added the flag; tests pass."),
            id="gemini-success",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-quota.jsonl", 1),
            AgentReport(
                0,
                0,
                failure=LIMIT,
                retry_at=NOW + timedelta(hours=2, minutes=3, seconds=4),
                detail="Your quota will reset after 2h3m4s.",
            ),
            id="gemini-quota",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-401.jsonl", 145),
            AgentReport(0, 0, failure=AUTH, detail="UNAUTHENTICATED"),
            id="gemini-401",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-bad-key.jsonl", 144),
            AgentReport(0, 0, failure=AUTH, detail="API_KEY_INVALID"),
            id="gemini-bad-key",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-503.log", 247),
            AgentReport(0, 0, failure=OUTAGE, detail="The model is overloaded."),
            id="gemini-503",
        ),
        pytest.param(
            "gemini",
            recorded("gemini-auth.txt", 41),
            AgentReport(failure=AUTH, detail="gemini: authentication failed"),
            id="gemini-exit-41",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-success.jsonl", 0),
            AgentReport(23800, 320, 0.03, 2, "Added the flag; tests pass."),
            id="opencode-success",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-auth.jsonl", 1),
            AgentReport(failure=AUTH, detail="ProviderAuthError Missing API key"),
            id="opencode-auth",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-401.jsonl", 1),
            AgentReport(failure=AUTH, detail="APIError invalid x-api-key"),
            id="opencode-401",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-429-retry-after.jsonl", 1),
            AgentReport(
                failure=LIMIT,
                retry_at=NOW + timedelta(seconds=2),
                detail="APIError Rate limit reached for gpt-5",
            ),
            id="opencode-429-retry-after",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-rate-limited.jsonl", 1),
            AgentReport(failure=LIMIT, detail="APIError Rate limit exceeded."),
            id="opencode-429",
        ),
        pytest.param(
            "opencode",
            recorded("opencode-unavailable.jsonl", 1),
            AgentReport(failure=OUTAGE, detail="APIError Service Unavailable"),
            id="opencode-503",
        ),
        pytest.param(
            "amp",
            recorded("amp-success.jsonl", 0),
            AgentReport(1750, 130, None, 2, "Added the flag; tests pass."),
            id="amp-success",
        ),
        pytest.param(
            "amp",
            recorded("amp-cached.jsonl", 0),
            AgentReport(18322, 130, None, 2, "Done."),
            id="amp-cache-tokens",
        ),
        pytest.param(
            "amp",
            recorded("amp-error.jsonl", 1),
            AgentReport(turns=0, failure=AUTH, detail="Out of free credits."),
            id="amp-error",
        ),
        pytest.param(
            "aider",
            recorded("aider-success.txt", 0),
            AgentReport(16100, 551, 0.09, 2),
            id="aider-success",
        ),
        pytest.param(
            "aider",
            recorded("aider-rate-limited.txt", 0),
            AgentReport(failure=LIMIT, detail="has rate limited you"),
            id="aider-rate-limited",
        ),
        pytest.param(
            "aider",
            recorded("aider-openai-rate-limited.txt", 0),
            AgentReport(
                failure=LIMIT, retry_at=NOW + timedelta(seconds=0.82), detail="has rate limited"
            ),
            id="aider-rate-limited-ms",
        ),
        pytest.param(
            "aider",
            recorded("aider-auth.txt", 0),
            AgentReport(failure=AUTH, detail="is not able to authenticate you"),
            id="aider-auth",
        ),
    ],
)
def test_report_from_recorded_output(
    repo: Path, name: str, run: AgentRun, expected: AgentReport
) -> None:
    """Tokens, cost, turns, final message, failure class and reset time come from the output."""
    report = any_agent(repo, name).report(run, NOW)
    assert dataclasses.replace(report, detail="") == dataclasses.replace(expected, detail="")
    assert expected.detail in report.detail
    assert bool(report.detail) == bool(expected.detail)


@pytest.mark.parametrize(
    ("exit_code", "output", "failure"),
    [
        pytest.param(
            1,
            'API Error: 500 {"type":"error","error":{"type":"api_error"}}',
            OUTAGE,
            id="outage",
        ),
        pytest.param(1, "Not logged in · Please run /login", AUTH, id="auth"),
        pytest.param(0, "Not logged in · Please run /login", None, id="exit-0-not-read"),
        pytest.param(1, "Traceback (most recent call last):\nKeyError: 'x'", None, id="crash"),
        pytest.param(
            1,
            "==== 1 failed, 401 passed in 3.20s ====",
            None,
            id="test-summary",
        ),
    ],
)
def test_command_agent_failure_from_its_last_words(
    repo: Path, tmp_path: Path, exit_code: int, output: str, failure: Reason | None
) -> None:
    """A command agent that exits non-zero is classified by the end of its output; exit 0 is not."""
    log_path = tmp_path / "agent.log"
    log_path.write_text(f"working...\n{output}\n", encoding="utf-8")
    run = AgentRun("exited", exit_code, log_path, log_path.read_text(encoding="utf-8"))
    report = any_agent(repo, "command").report(run, NOW)
    assert report.failure is failure
    assert report.retry_at is None
