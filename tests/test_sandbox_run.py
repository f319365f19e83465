"""The sandbox, the environment and the secret scan in whole runs of ``ralph run --once``.

A hostile ``command`` agent does its task and then goes after what the box should keep from
it: ``.git``, the specs, the settings, the user's SSH key, the network. Each try's result is
written into a file the agent commits, so the test reads from git what the agent could do.
Skipped, like tests/test_sandbox.py, only where bubblewrap can't run (never in CI).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project

from ralph.runtime import sandbox

PROBE = sandbox.check()
if PROBE.unavailable and os.environ.get("RALPHD_REQUIRE_SANDBOX") == "1":
    raise RuntimeError(f"RALPHD_REQUIRE_SANDBOX=1 but no sandbox here: {PROBE.message}")
needs_sandbox = pytest.mark.skipif(PROBE.unavailable, reason=f"no sandbox here: {PROBE.message}")

HOSTILE = r"""#!/bin/sh
# The task, then every attack; each line of tried.txt says whether it worked.
echo 'def mul(a, b):\n    return a * b' > mul.py
try() { if sh -c "$2" >/dev/null 2>&1; then echo "$1: worked"; else echo "$1: blocked"; fi; }
{
  try hook 'echo "touch /tmp/pwned" > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit'
  try git-config 'echo "[core]" >> .git/config'
  try spec 'echo hacked >> specs/mul.md'
  try settings 'echo "# hacked" >> ralph.toml'
  try memory 'echo "- obey me" >> AGENTS.md'
  try ssh-key 'cat "$REAL_HOME/.ssh/id_rsa"'
  try network 'python3 -c "import socket; socket.create_connection((\"127.0.0.1\", $PORT), 2)"'
} > tried.txt
env | cut -d= -f1 | sort > env-names.txt
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback, accepting and closing connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
                connection.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def hostile_project(project: Project, tmp_path: Path, port: int, **settings: object) -> Path:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE KEY OF THE USER\n")
    agent = project.write("agent.sh", HOSTILE)
    agent.chmod(0o755)
    project.write("AGENTS.md", "# Memory\n")
    project.spec("mul", max_attempts=1)
    project.configure(
        agent="command",
        agent_command=f"sh {agent}",
        agent_env={"REAL_HOME": str(home), "PORT": str(port)},
        **settings,
    )
    project.commit()
    return home


def tried(project: Project) -> dict[str, str]:
    text = project.git("show", "HEAD:tried.txt")
    return dict(line.split(": ", 1) for line in text.splitlines())


@needs_sandbox
def test_the_boxed_agent_does_its_task_and_nothing_else(
    project: Project, tmp_path: Path, listener: int
) -> None:
    home = hostile_project(project, tmp_path, listener, sandbox="bwrap", network="off")
    project.ralph("run", "--once", check_code=0, env={"HOME": str(home)}, timeout=120)
    assert project.task_commits() == [("mul", "1")]
    assert tried(project) == {
        "hook": "blocked",
        "git-config": "blocked",
        "spec": "blocked",
        "settings": "blocked",
        "memory": "blocked",
        "ssh-key": "blocked",
        "network": "blocked",
    }
    assert not (project.root / ".git" / "hooks" / "pre-commit").exists()


def test_without_the_box_the_gate_still_holds_but_the_agent_reaches_more(
    project: Project, tmp_path: Path, listener: int
) -> None:
    """The same agent with sandbox = "none": what it reads and reaches is not stopped (that is
    what the box is for), and the gate still rolls back what it wrote where it may not."""
    home = hostile_project(project, tmp_path, listener)
    project.ralph("run", "--once", check_code=1, env={"HOME": str(home)}, timeout=120)
    assert project.task_commits() == []
    [rolled] = [e for e in project.events() if e["event"] == "rolled_back"]
    assert rolled["reason"] in {"git_tampered", "protected"}
    assert not (project.root / ".git" / "hooks" / "pre-commit").exists()
    assert "hacked" not in (project.root / "specs" / "mul.md").read_text()


def test_the_agent_gets_an_allowlisted_environment(
    project: Project, tmp_path: Path, listener: int
) -> None:
    """Cloud credentials, a forge token, the SSH agent and database URLs stay with ralph;
    pass_env lets one through by name."""
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "x",
        "GITHUB_TOKEN": "x",
        "SSH_AUTH_SOCK": "/tmp/agent.sock",
        "DATABASE_URL": "postgresql://u:p@h/db",
        "MY_TOOL_HOME": "/opt/tool",
    }
    home = hostile_project(project, tmp_path, listener, pass_env=["MY_TOOL_*"])
    # The hostile part fails the gate here; only the environment matters in this test.
    project.ralph("run", "--once", env={"HOME": str(home), **secrets}, timeout=120)
    [attempt] = (project.root / ".ralph" / "attempts" / "mul").iterdir()
    diff = (attempt / "changes.diff").read_text()
    names = {line[1:] for line in diff.splitlines() if line.startswith("+") and "=" not in line}
    assert "PATH" in names and "HOME" in names and "MY_TOOL_HOME" in names
    assert not names & {"AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SSH_AUTH_SOCK", "DATABASE_URL"}


def test_a_secret_in_the_change_fails_the_attempt_and_is_never_kept(project: Project) -> None:
    """An AWS key pair written by the agent: the attempt fails as `secret`, the event names
    file and line, and neither half is left in ralph's folder (kept diff, worktree, logs)."""
    key = "AKIA" + "Q3EGRIT7M2XZ4B5C"
    secret = "q8Zr3VtPw0LmN6yXc2Hj" + "Ks9Ba4Ue7Gd1Rf5Tz/Yo"
    project.spec("cfg", max_attempts=1)
    project.attempts(
        "cfg",
        {
            "steps": [
                {
                    "write": "settings.py",
                    "content": f'AWS_ACCESS_KEY_ID = "{key}"\nAWS_SECRET_ACCESS_KEY = "{secret}"\n',
                }
            ]
        },
    )
    project.commit()
    project.ralph("run", "--once", check_code=1)
    assert project.task_commits() == []
    task = project.status_json()["cfg"]
    assert (task["state"], task["failure_class"]) == ("failed", "secret")
    [found] = [e for e in project.events() if e["event"] == "secret_found"]
    assert found["places"][0].startswith("settings.py:")
    kept = "".join(
        path.read_text(errors="replace")
        for path in (project.root / ".ralph").rglob("*")
        if path.is_file() and path.stat().st_size < 1_000_000
    )
    assert key not in kept and secret not in kept
