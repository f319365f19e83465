"""Hostile agents: each one tries to get past the gate or leave a mess, and fails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Project


def marker_processes(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != b"Z":
            found.append(int(entry.name))
    return found


def wait_gone(marker: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := marker_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def refs(project: Project) -> dict[str, str]:
    out = project.git("for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ", 1) for line in out.splitlines())


def rolled_back_reasons(project: Project) -> list[str]:
    return [e["reason"] for e in project.events() if e["event"] == "rolled_back"]


@pytest.mark.parametrize(
    ("command", "guarded", "planted"),
    [
        (
            'g=$(git rev-parse --git-common-dir); mkdir -p "$g/hooks" && '
            "printf '#!/bin/sh\\ntouch /tmp/owned\\n' > \"$g/hooks/pre-commit\" && "
            'chmod +x "$g/hooks/pre-commit"',
            ".git/hooks/pre-commit",
            b"owned",
        ),
        ("git config core.hooksPath /tmp/evil-hooks", ".git/config", b"evil-hooks"),
        (
            'echo secret.txt >> "$(git rev-parse --git-common-dir)/info/exclude"',
            ".git/info/exclude",
            b"secret.txt",
        ),
    ],
)
def test_changes_under_git_dir_fail_and_are_restored(
    project: Project, command: str, guarded: str, planted: bytes
) -> None:
    """Planting a hook or editing git config or excludes fails the attempt and is undone."""
    project.spec("task", max_attempts=1)
    project.attempts(
        "task",
        {"steps": [{"write": "x.txt", "content": "x\n"}, {"run": command, "check": True}]},
    )
    project.commit()
    path = project.root / guarded
    project.ralph("run", "--once", check_code=1)
    assert rolled_back_reasons(project) == ["git_tampered"]
    assert not path.exists() or planted not in path.read_bytes()
    assert project.task_commits() == []


@pytest.mark.parametrize(
    "history_moves",
    [
        "git add -A && git commit -qm sneaky && git tag v-agent && git branch agent-branch",
        "git add -A && git commit -q --amend -m amended",
        "git checkout -q -b elsewhere && git add -A && git commit -qm on-elsewhere",
        "git stash -q -u && git stash list",
    ],
    ids=["commit-tag-branch", "amend", "switch-branch", "stash"],
)
def test_history_moves_are_folded_back_and_leave_no_stray_refs(
    project: Project, history_moves: str
) -> None:
    """Commits, amends, branch switches, tags and stashes leave no trace but ralph's commit."""
    project.spec("task")
    project.attempts(
        "task",
        {
            "steps": [
                {"write": "first.txt", "content": "1\n"},
                {"run": history_moves, "check": True},
                {"write": "second.txt", "content": "2\n"},
            ]
        },
    )
    start = project.commit()
    before = refs(project)
    project.ralph("run", "--once", check_code=0)
    after = refs(project)
    assert after.pop("refs/heads/main") == project.head()
    before.pop("refs/heads/main")
    assert after == before
    assert project.git("rev-parse", "HEAD~1").strip() == start
    assert project.git("symbolic-ref", "HEAD").strip() == "refs/heads/main"
    committed = set(project.git("show", "--name-only", "--format=", "HEAD").split())
    assert "second.txt" in committed
    assert project.git("status", "--porcelain") == ""


def test_hard_reset_is_judged_as_part_of_the_change(project: Project) -> None:
    """A hard reset by the agent is undone for HEAD; what it removed counts as its change."""
    project.spec("task")
    project.commit("setup")
    project.write("old.txt", "old\n")
    project.attempts(
        "task",
        {
            "steps": [
                {"run": "git reset -q --hard HEAD~1", "check": True},
                {"write": "new.txt", "content": "new\n"},
            ]
        },
    )
    start = project.commit("add old.txt")
    project.ralph("run", "--once", check_code=0)
    assert project.git("rev-parse", "HEAD~1").strip() == start
    status = project.git("show", "--name-status", "--format=", "HEAD").split("\n")
    assert "A\tnew.txt" in status and "D\told.txt" in status


def test_ignored_file_in_protected_path_never_reaches_the_specs(project: Project) -> None:
    """A git-ignored file added under specs/ (a hidden task) stays in the agent's worktree:
    the user's specs never see it, and only what git sees is committed."""
    project.write(".gitignore", "*.secret.md\n")
    project.spec("task", max_attempts=1)
    project.attempts(
        "task",
        {
            "steps": [
                {"write": "x.txt", "content": "x\n"},
                {"write": "specs/evil.secret.md", "content": "# Evil task\n"},
            ]
        },
    )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert not (project.root / "specs" / "evil.secret.md").exists()
    assert "evil.secret" not in project.git("show", "--name-only", "HEAD")
    assert set(project.status_json()) == {"task"}


def test_double_forked_daemon_does_not_survive_the_attempt(project: Project) -> None:
    """A daemon started in its own session (setsid) is still found and killed."""
    marker = f"ralph-daemon-marker-{os.getpid()}"
    project.spec("task")
    project.attempts(
        "task",
        {
            "steps": [
                {"write": "x.txt", "content": "x\n"},
                {"run": f"setsid sh -c 'exec -a {marker} sleep 300' </dev/null >/dev/null 2>&1 &"},
                {"sleep": 0.3},
            ]
        },
    )
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=30)
    assert wait_gone(marker) == []


def test_daemon_started_by_a_check_does_not_survive(project: Project) -> None:
    """Checks are supervised the same way: a background process they leave is killed."""
    marker = f"ralph-check-marker-{os.getpid()}"
    project.spec("task")
    project.configure(checks=[f"(exec -a {marker} sleep 300) >/dev/null 2>&1 & true"])
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0, timeout=30)
    assert wait_gone(marker) == []


def test_output_flood_is_capped_and_memory_stays_flat(project: Project) -> None:
    """An agent printing 300 MB leaves a capped log and ralph's peak memory stays small."""
    project.spec("loud")
    project.attempts(
        "loud",
        {
            "steps": [
                {"flood": 300 * 1024 * 1024},
                {"flood": 1024, "stream": "stderr"},
                {"write": "x.txt", "content": "x\n"},
            ]
        },
    )
    project.commit()
    proc = project.popen("run", "--once")
    peak_kb = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    log = next((project.root / ".ralph" / "attempts" / "loud").iterdir()) / "agent.log"
    assert log.stat().st_size < 9 * 1024 * 1024
    assert "bytes not kept" in log.read_text(errors="replace")
    assert peak_kb < 150 * 1024, f"ralph peaked at {peak_kb} KiB"


def test_file_operations_are_committed_as_git_sees_them(project: Project) -> None:
    """Deletes, renames, mode changes and binary files are committed; ignored files are not."""
    project.write(".gitignore", "*.log\n")
    project.write("delete-me.txt", "bye\n")
    project.write("rename-me.txt", "moving\n")
    project.write("run.sh", "#!/bin/sh\n")
    project.spec("files")
    write_blob = f"{sys.executable} -c \"open('blob.bin', 'wb').write(bytes(range(256)))\""
    project.attempts(
        "files",
        {
            "steps": [
                {"delete": "delete-me.txt"},
                {"rename": "rename-me.txt", "to": "moved/renamed.txt"},
                {"chmod": "run.sh", "mode": "755"},
                {"run": write_blob, "check": True},
                {"write": "debug.log", "content": "ignored\n"},
            ]
        },
    )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    status = set(
        project.git("show", "--name-status", "--no-renames", "--format=", "HEAD").split("\n")
    )
    assert {
        "D\tdelete-me.txt",
        "D\trename-me.txt",
        "A\tmoved/renamed.txt",
        "M\trun.sh",
        "A\tblob.bin",
    } <= status
    assert not any("debug.log" in line for line in status)
    assert project.git("ls-files", "-s", "run.sh").startswith("100755")
    blob = subprocess.run(
        ["git", "cat-file", "blob", "HEAD:blob.bin"], cwd=project.root, capture_output=True
    ).stdout
    assert blob == bytes(range(256))
    assert not (project.root / "debug.log").exists()  # it stayed in the agent's worktree


def test_sigterm_ignoring_agent_is_killed_after_grace(project: Project) -> None:
    """An agent that ignores SIGTERM past the timeout is SIGKILLed after kill_grace."""
    project.spec("stubborn", max_attempts=1)
    project.configure(attempt_timeout="1s", kill_grace="0.5s")
    project.attempts(
        "stubborn",
        {"steps": [{"write": "x.txt", "content": "x\n"}, {"ignore_sigterm": True}, {"sleep": 60}]},
    )
    project.commit()
    started = time.monotonic()
    project.ralph("run", "--once", check_code=1, timeout=30)
    assert time.monotonic() - started < 15
    assert rolled_back_reasons(project) == ["timeout"]
    exited = [e for e in project.events() if e["event"] == "agent_exited"]
    assert exited[0]["outcome"] == "timeout"


def test_spec_planted_by_the_agent_is_kept_aside(project: Project) -> None:
    """A new spec written during an attempt fails it and is kept in the attempt's diff, not
    run and not lost."""
    project.spec("task", max_attempts=1)
    project.attempts(
        "task",
        {
            "steps": [
                {"write": "x.txt", "content": "x\n"},
                {"write": "specs/planted.md", "content": "# Do something evil\n"},
            ]
        },
    )
    project.commit()
    project.ralph("run", "--once", check_code=1)
    assert rolled_back_reasons(project) == ["protected"]
    assert not (project.root / "specs" / "planted.md").exists()
    (diff,) = (project.root / ".ralph" / "attempts").rglob("changes.diff")
    assert "specs/planted.md" in diff.read_text() and "Do something evil" in diff.read_text()
    assert "planted" not in project.status_json()


def test_settings_in_pyproject_protect_pyproject(project: Project) -> None:
    """With settings in [tool.ralph], the agent may not rewrite pyproject.toml (its own checks)."""
    (project.root / "ralph.toml").unlink()
    project.write(
        "pyproject.toml",
        "[tool.ralph]\n"
        + "".join(
            f"{key} = {value}\n"
            for key, value in {
                "agent": '"scripted"',
                "agent_script": f'"{project.script_path}"',
                "checks": '["true"]',
                "max_attempts": "1",
            }.items()
        ),
    )
    project.spec("task")
    project.attempts(
        "task",
        {
            "steps": [
                {"write": "x.txt", "content": "x\n"},
                {"append": "pyproject.toml", "content": "# weaker checks\n"},
            ]
        },
    )
    project.git("add", "-A")
    project.git("commit", "-qm", "settings in pyproject")
    project.ralph("run", "--once", check_code=1)
    assert rolled_back_reasons(project) == ["protected"]


def test_hook_that_refuses_the_commit_fails_the_attempt(project: Project) -> None:
    """With run_hooks, a pre-commit hook saying no is a failed attempt, not a crash."""
    project.spec("task", max_attempts=1)
    project.configure(run_hooks=True)
    project.attempts(
        "task", {"steps": [{"write": "x.txt", "content": "x\n"}, {"learn": "Hooks run here."}]}
    )
    project.commit()
    hook = project.root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'lint says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    result = project.ralph("run", "--once", check_code=1)
    assert "Traceback" not in result.stderr
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert rolled[0]["reason"] == "commit_rejected" and "lint says no" in rolled[0]["summary"]
    assert project.task_commits() == []
    assert project.git("status", "--porcelain") == ""
    assert project.current_attempt() is None
