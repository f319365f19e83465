"""Running as a service: systemd's notify protocol and watchdog, the heartbeat, the unit files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project

ROOT = Path(__file__).resolve().parents[1]


def receive(sock: socket.socket, until: str, seconds: float = 20.0) -> list[str]:
    """Datagrams from ralph until one contains ``until`` (or the time is up)."""
    messages: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in messages[-1]:
            break
    return messages


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_notify_ready_status_watchdog_stopping(
    project: Project, tmp_path: Path, notify_socket: socket.socket
) -> None:
    """The daemon sends READY=1 once before any WATCHDOG=1, STATUS lines, WATCHDOG=1 at half
    WATCHDOG_USEC, and STOPPING=1 once."""
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.configure(poll_interval="30s")
    project.commit()
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
    proc = project.popen("run", env=env)
    try:
        before_idle = receive(notify_socket, "STATUS=idle")
        beats = receive(notify_socket, "no such message", seconds=1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    after = receive(notify_socket, "no such message", seconds=0.5)
    ready = next(m.splitlines() for m in before_idle if "READY=1" in m)
    assert f"MAINPID={proc.pid}" in ready
    statuses = [line for m in before_idle for line in m.splitlines() if line.startswith("STATUS=")]
    assert "STATUS=task task attempt 1" in statuses
    messages = [line for m in before_idle for line in m.splitlines()]
    assert messages.index("READY=1") < messages.index("WATCHDOG=1")  # no ping before READY
    assert sum(line == "READY=1" for line in messages) == 1
    assert statuses[-1] == "STATUS=idle: waiting for new specs"
    # 1.5 s at a 0.2 s interval: several watchdog pings while idle.
    assert sum(m == "WATCHDOG=1" for m in beats) >= 4
    assert sum("STOPPING=1" in m for m in after) == 1


def test_ready_comes_after_the_lock_and_recovery(
    project: Project, tmp_path: Path, notify_socket: socket.socket
) -> None:
    """A ralph that can't get the lock exits 75 without ever saying READY=1."""
    project.commit()
    holder = project.popen("run")
    try:
        deadline = time.monotonic() + 20
        while not (project.root / ".ralph" / "heartbeat").exists():
            assert time.monotonic() < deadline, "the first ralph never started"
            time.sleep(0.05)
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        assert project.ralph("run", "--once", env=env, keep_notify=True).returncode == 75
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=20)
    assert not any("READY=1" in m for m in receive(notify_socket, "READY=1", seconds=0.5))


def test_heartbeat_health_check(project: Project) -> None:
    """`python -m ralph.runtime.service health` is 0 while a ralph runs here, 1 once it is gone."""
    project.commit()
    health = [sys.executable, "-m", "ralph.runtime.service", "health", str(project.root)]
    assert subprocess.run(health, capture_output=True).returncode == 1  # never ran
    proc = project.popen("run")
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(health, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "no healthy heartbeat"
            time.sleep(0.1)
        record = json.loads((project.root / ".ralph" / "heartbeat").read_text())
        assert record["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    result = subprocess.run(health, capture_output=True, text=True)
    assert result.returncode == 1 and "gone" in result.stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not available (apt-get install systemd to verify the units)",
)
@pytest.mark.parametrize("unit", ["ralph@.service", "ralph-batch@.service", "ralph-batch@.timer"])
def test_systemd_units_verify(tmp_path: Path, unit: str) -> None:
    """systemd-analyze verify accepts each unit in contrib/systemd (as an instance)."""
    ralph_bin = tmp_path / "bin" / "ralph"  # the units name the installed ralph; stand in
    ralph_bin.parent.mkdir()
    ralph_bin.write_text("#!/bin/sh\n")
    ralph_bin.chmod(0o755)
    for path in (ROOT / "contrib" / "systemd").iterdir():
        text = path.read_text().replace("/usr/local/bin/ralph", str(ralph_bin))
        (tmp_path / path.name).write_text(text)
    for template in tmp_path.glob("*@.*"):
        (tmp_path / template.name.replace("@.", "@srv-repo.")).symlink_to(template)
    instance = unit.replace("@.", "@srv-repo.")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / instance)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    problems = [line for line in result.stderr.splitlines() if unit.split("@")[0] in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_dockerfile_structure() -> None:
    """The Dockerfile: slim base, git, tini as PID 1, non-root user, a volume, a health check."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        " ".join(line.split())
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines)
    assert lines[0].startswith("FROM python:") and "slim" in lines[0]
    assert "tini" in text and "git" in text
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert json.loads(entry.removeprefix("ENTRYPOINT")) == [
        "/usr/bin/tini",
        "--",
        "ralph",
        "-C",
        "/repo",
    ]
    users = [line.split()[1] for line in lines if line.startswith("USER")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("VOLUME") for line in lines)
    assert any(line.startswith("ARG AGENT_CLIS") for line in lines)
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    probe = json.loads(health.split(" CMD ", 1)[1])
    assert probe == ["python", "-m", "ralph.runtime.service", "health", "/repo"]
    command = next(line for line in lines if line.startswith("CMD"))
    assert json.loads(command.removeprefix("CMD")) == ["run"]
