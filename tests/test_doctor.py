"""ralph doctor: one line per finding, non-zero when something is wrong."""

from __future__ import annotations

import fcntl

from conftest import Project


def test_doctor_passes_on_a_healthy_repository(project: Project) -> None:
    """With git, the scripted agent, existing checks and specs, every line is ok and it exits 0."""
    project.configure(checks=["true", "git --version", "FOO=1 test -d specs"])
    project.commit()
    result = project.ralph("doctor", check_code=0)
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("ok") for line in lines)
    topics = {line.split()[1].rstrip(":") for line in lines}
    assert {"settings", "git", "repository", "agent", "check", "specs", "lock"} <= topics


def test_doctor_names_each_problem(project: Project) -> None:
    """A missing agent CLI and a missing check command are FAIL lines; the exit code is 1."""
    project.configure(agent="codex", checks=["no-such-linter --strict", "true"])
    project.commit()
    result = project.ralph("doctor", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    fails = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any("agent" in line and "codex" in line for line in fails)
    assert any("no-such-linter" in line for line in fails)
    assert "2 problem(s) found" in result.stderr


def test_doctor_reports_a_bad_setting(project: Project) -> None:
    """A settings error is reported as a FAIL line, not a traceback."""
    project.configure(attempt_timeout="soon")
    project.commit()
    result = project.ralph("doctor")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  settings: attempt_timeout")


def test_doctor_says_who_holds_the_lock(project: Project) -> None:
    """While another ralph holds the lock, doctor says so (and it is not a problem)."""
    project.commit()
    lock = project.root / ".ralph" / "lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write("4242\n")
        handle.flush()
        result = project.ralph("doctor", check_code=0)
    assert "ok    lock: held by ralph pid 4242" in result.stdout


def test_run_refuses_to_start_without_the_agent_cli(project: Project) -> None:
    """ralph run exits 2 at once when the preset's executable is not on PATH."""
    project.spec("task")
    project.configure(agent="claude")
    head = project.commit()
    result = project.ralph("run", "--once", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "'claude' is not on PATH" in result.stderr
    assert project.head() == head
