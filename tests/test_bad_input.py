"""Bad input around the repository: one clear line, the right exit code, nothing touched."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project, git, to_toml


def ralph(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_untouched(project: Project, head: str) -> None:
    assert project.head() == head
    assert not (project.root / ".ralph").exists()


def test_not_a_git_repository(tmp_path: Path) -> None:
    """ralph run outside a git repository exits 2 and says so in one line."""
    (tmp_path / "ralph.toml").write_text(to_toml({"checks": ["true"]}))
    result = ralph(tmp_path, "run", "--once")
    assert result.returncode == 2
    assert "not a git repository" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".ralph").exists()


def test_missing_directory(tmp_path: Path) -> None:
    """-C pointing nowhere is a usage error (exit 2)."""
    result = ralph(tmp_path / "nope", "status")
    assert result.returncode == 2


def test_detached_head(project: Project) -> None:
    """A detached HEAD stops ralph with exit 2 before it touches anything."""
    project.spec("task")
    head = project.commit()
    project.git("checkout", "-q", "--detach")
    result = project.ralph("run", "--once")
    assert result.returncode == 2 and "detached" in result.stderr
    assert_untouched(project, head)


def test_unborn_branch(tmp_path: Path) -> None:
    """A repository with no commits yet stops ralph with exit 2 and a hint."""
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "ralph.toml").write_text(
        to_toml({"checks": ["true"], "agent": "command", "agent_command": "true"})
    )
    (tmp_path / "specs").mkdir()
    result = ralph(tmp_path, "run", "--once")
    assert result.returncode == 2 and "no commits yet" in result.stderr
    assert not (tmp_path / ".ralph").exists()


def test_specs_directory_missing(project: Project) -> None:
    """A missing specs_dir stops `ralph run` with exit 2 naming the setting."""
    project.configure(specs_dir="tasks")
    head = project.commit()
    result = project.ralph("run", "--once")
    assert result.returncode == 2 and "specs_dir" in result.stderr and "tasks" in result.stderr
    assert_untouched(project, head)


@pytest.mark.parametrize(
    "command", ["no-such-agent-binary --flag", "./agent.sh"], ids=["missing", "not-executable"]
)
def test_agent_executable_missing_or_not_executable(project: Project, command: str) -> None:
    """An agent that can't be started stops `ralph run` with exit 2 naming the executable."""
    project.write("agent.sh", "#!/bin/sh\necho hi\n")  # not chmod +x
    project.spec("task")
    project.configure(agent="command", agent_command=command)
    head = project.commit()
    result = project.ralph("run", "--once")
    assert result.returncode == 2
    assert command.split()[0] in result.stderr
    assert_untouched(project, head)


def test_scripted_agent_without_script_file(project: Project) -> None:
    """agent = scripted with a script path that doesn't exist is a settings error (exit 2)."""
    project.spec("task")
    project.configure(agent_script=str(project.root.parent / "missing.toml"))
    head = project.commit()
    result = project.ralph("run", "--once")
    assert result.returncode == 2 and "agent_script" in result.stderr
    assert_untouched(project, head)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"---\npriority: [\n---\n# x\n", "not valid YAML"),
        (b"\xff\xfe# not utf-8\n", "not UTF-8"),
        (b"", "empty spec"),
        (b"---\npriority: high\n---\n# x\n", "priority"),
        (b"---\ncolour: red\n---\n# x\n", "colour"),
        (b"# " + b"x" * (300 * 1024), "limit"),
    ],
    ids=["yaml", "encoding", "empty", "wrong-type", "unknown-key", "huge"],
)
def test_bad_spec_is_reported_and_skipped(project: Project, raw: bytes, problem: str) -> None:
    """A spec that can't be read is reported with its file and skipped; the good one is done."""
    project.spec("good")
    project.attempts("good", {"steps": [{"write": "good.txt", "content": "ok\n"}]})
    project.write("specs/bad.md", raw)
    project.commit()
    result = project.ralph("run", "--once")
    assert result.returncode == 1
    assert "specs/bad.md" in result.stderr and problem in result.stderr
    assert project.task_commits() == [("good", "1")]
    assert project.status_json()["bad"]["state"] == "invalid"


def test_stale_index_lock_is_removed_and_work_goes_on(project: Project) -> None:
    """An index.lock left by a killed git (no git process running) doesn't stop the task."""
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    (project.root / ".git" / "index.lock").write_text("")
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("task", "1")]
    assert not (project.root / ".git" / "index.lock").exists()


def test_index_lock_held_by_a_running_git_is_waited_for(project: Project) -> None:
    """While a git process works in the repository (a commit waiting in an editor), ralph
    never removes its index.lock: it says it waits, and lands once that git is done."""
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    lock = project.root / ".git" / "index.lock"
    lock.write_text("")
    # A process whose name is git, working in the repository, stands for a live git.
    fake_git = project.root.parent / "bin" / "git"
    fake_git.parent.mkdir()
    fake_git.symlink_to("/bin/sleep")
    holder = subprocess.Popen([str(fake_git), "60"], cwd=project.root)
    ralph = project.popen("run", "--once")
    try:
        deadline = time.monotonic() + 30
        while not _said(project, "waiting_for_git") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _said(project, "waiting_for_git")
        assert lock.exists() and ralph.poll() is None
    finally:
        holder.kill()
        holder.wait()
    lock.unlink()  # as the git would, when it finishes
    _out, err = ralph.communicate(timeout=60)
    assert ralph.returncode == 0, err
    assert project.task_commits() == [("task", "1")]


def _said(project: Project, event: str) -> bool:
    path = project.root / ".ralph" / "events.jsonl"
    return path.exists() and f'"event": "{event}"' in path.read_text()
