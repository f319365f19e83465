"""The real Claude Code CLI against a model endpoint that refuses its key, fully offline.

Claude Code doesn't exit on a 401: it retries ten times over about three minutes, printing
an ``api_retry`` event before each wait. ralph must read those as they come, stop it, exit
2 and count no attempt, within seconds. `make test` installs @anthropic-ai/claude-code from
the npm registry (its native binary comes as an npm dependency); without npm the test is
skipped, and says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from conftest import Project
from fake_messages_api import RefusingMessagesAPI

CLAUDE = os.environ.get("CLAUDE_BIN") or str(
    Path(__file__).resolve().parents[1] / ".venv" / "claude" / "node_modules" / ".bin" / "claude"
)

pytestmark = pytest.mark.skipif(
    not Path(CLAUDE).exists(),
    reason=f"Claude Code not installed at {CLAUDE} (needs npm; `make test` installs it)",
)


def test_a_refused_key_stops_claude_code_within_seconds(project: Project, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    project.spec("hello", "# Write hello.txt\n\nCreate hello.txt saying hello.\n")
    api = RefusingMessagesAPI()
    with api.running():
        project.configure(
            agent="claude",
            checks=["test -f hello.txt"],
            attempt_timeout="5m",
            agent_env={
                "HOME": str(home),
                "ANTHROPIC_BASE_URL": api.base_url,
                "ANTHROPIC_API_KEY": "sk-ant-test-refused",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_AUTOUPDATER": "1",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            },
        )
        project.commit()
        path = f"{Path(CLAUDE).parent}{os.pathsep}{os.environ['PATH']}"
        started = time.monotonic()
        result = project.ralph("run", "--once", env={"PATH": path}, timeout=240)
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-4000:]
    assert elapsed < 30, elapsed
    assert "could not authenticate" in result.stderr
    exited = [e for e in project.events() if e["event"] == "agent_exited"]
    assert [(e["outcome"], e["failure_class"]) for e in exited] == [("halted", "auth")]
    retrying = [e for e in project.events() if e["event"] == "agent_retrying"]
    assert retrying and all(e["status"] == 401 for e in retrying)
    assert 1 <= api.requests <= 4  # stopped at its first retries, not its tenth
    assert project.status_json()["hello"]["attempts"] == 0
