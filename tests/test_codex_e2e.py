"""A real agent CLI, end to end: Codex CLI against a fake model server, fully offline.

`make test` installs @openai/codex from the npm registry; without npm the test is
skipped, and says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project
from fake_responses_api import FakeResponsesAPI

CODEX = os.environ.get("CODEX_BIN") or str(
    Path(__file__).resolve().parents[1] / ".venv" / "codex" / "node_modules" / ".bin" / "codex"
)

pytestmark = pytest.mark.skipif(
    not Path(CODEX).exists(),
    reason=f"Codex CLI not installed at {CODEX} (needs npm; `make test` installs it)",
)


@pytest.fixture
def codex_project(project: Project, tmp_path: Path) -> Iterator[Project]:
    """A project whose agent is the real codex CLI, with its home and PATH in tmp_path."""
    home = tmp_path / "home"
    (home / ".codex").mkdir(parents=True)
    project.spec("hello", "# Write hello.txt\n\nCreate hello.txt saying hello from codex.\n")
    project.configure(
        agent="codex",
        model="gpt-5.5",
        checks=["grep -qx 'hello from codex' hello.txt"],
        retry_backoff="0.2s",
        attempt_timeout="60s",
        agent_env={"CODEX_HOME": str(home / ".codex"), "HOME": str(home), "FAKE_KEY": "sk-test"},
    )
    yield project


def configure_server(project: Project, api: FakeResponsesAPI, retries: int = 0) -> None:
    """Point codex at the fake server, with ``retries`` of its own and nothing sent outside."""
    provider = "model_providers.fake"
    args: list[str] = []
    for option in (
        "model_provider=fake",
        f"{provider}.name=fake",
        f"{provider}.base_url={api.base_url}",
        f"{provider}.env_key=FAKE_KEY",
        f"{provider}.request_max_retries={retries}",
        f"{provider}.stream_max_retries={retries}",
        "analytics.enabled=false",
    ):
        args += ["-c", option]
    project.configure(agent_args=[*args, "--disable", "plugins"])
    project.commit()


def run_ralph(project: Project, code: int) -> str:
    path = f"{Path(CODEX).parent}{os.pathsep}{os.environ['PATH']}"
    result = project.ralph("run", "--once", env={"PATH": path}, timeout=180)
    assert result.returncode == code, result.stderr[-4000:]
    return result.stderr


def agent_events(project: Project) -> list[dict[str, object]]:
    return [event for event in project.events() if event["event"] == "agent_exited"]


def test_codex_writes_the_file_and_ralph_commits_it(codex_project: Project) -> None:
    """codex runs one tool call against the fake model; ralph checks, commits and reads usage."""
    api = FakeResponsesAPI("printf 'hello from codex\\n' > hello.txt")
    with api.running():
        configure_server(codex_project, api)
        run_ralph(codex_project, 0)
    assert codex_project.task_commits() == [("hello", "1")]
    assert (codex_project.root / "hello.txt").read_text() == "hello from codex\n"
    (event,) = agent_events(codex_project)
    assert event["agent"] == "codex" and event["exit_code"] == 0
    assert (event["input_tokens"], event["output_tokens"]) == (200, 14)  # summed over 2 calls
    assert event["final_message"] == "Done." and event["turns"] == 1
    prompt = api.requests[0]["input"][-1]["content"][0]["text"]
    assert "Create hello.txt saying hello from codex." in prompt


def test_codex_usage_limit_is_waited_out_without_using_an_attempt(codex_project: Project) -> None:
    """A 429 usage limit is classed usage_limit; ralph waits for the reset and retries attempt 1."""
    api = FakeResponsesAPI("printf 'hello from codex\\n' > hello.txt", ["usage_limit"])
    with api.running():
        configure_server(codex_project, api)
        run_ralph(codex_project, 0)
    classes = [event["failure_class"] for event in agent_events(codex_project)]
    assert classes == ["usage_limit", None]
    waits = [event for event in codex_project.events() if event["event"] == "waiting"]
    assert waits and waits[0]["reason"] == "usage_limit"
    assert codex_project.task_commits() == [("hello", "1")]


def test_codex_outage_backs_off_and_retries(codex_project: Project) -> None:
    """A 503 is classed api_outage; after a short backoff the same attempt succeeds."""
    api = FakeResponsesAPI("printf 'hello from codex\\n' > hello.txt", ["outage"])
    with api.running():
        configure_server(codex_project, api)
        run_ralph(codex_project, 0)
    classes = [event["failure_class"] for event in agent_events(codex_project)]
    assert classes == ["api_outage", None]
    assert codex_project.task_commits() == [("hello", "1")]


def test_codex_bad_credentials_stop_the_run(codex_project: Project) -> None:
    """A 401 is classed auth: ralph stops with exit 2 and says to fix the credentials."""
    api = FakeResponsesAPI("true", ["auth", "auth", "auth"])
    with api.running():
        configure_server(codex_project, api)
        stderr = run_ralph(codex_project, 2)
    assert "could not authenticate" in stderr
    assert codex_project.task_commits() == []
    assert codex_project.status_json()["hello"]["attempts"] == 0


def test_codex_retrying_a_refused_key_is_stopped_within_seconds(codex_project: Project) -> None:
    """Codex left to its own retries on a 401 reconnects with growing waits; ralph reads
    each "Reconnecting..." as it comes, stops codex, exits 2, and counts no attempt."""
    api = FakeResponsesAPI("true", ["auth"] * 50)
    with api.running():
        configure_server(codex_project, api, retries=8)
        started = time.monotonic()
        stderr = run_ralph(codex_project, 2)
        elapsed = time.monotonic() - started
    assert "could not authenticate" in stderr
    assert elapsed < 30, elapsed
    [exited] = agent_events(codex_project)
    assert (exited["outcome"], exited["failure_class"]) == ("halted", "auth")
    assert codex_project.status_json()["hello"]["attempts"] == 0
