"""Starting again after a crash: states a killed ralph can leave behind."""

from __future__ import annotations

import hashlib
import json

from conftest import Project


def test_task_killed_in_its_last_attempt_is_marked_failed(project: Project) -> None:
    """A task whose attempts were all used (the last one killed) fails instead of crashing ralph."""
    project.spec("task", max_attempts=2)
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    assert project.status_json()["task"]["state"] == "pending"
    raw = (project.root / "specs" / "task.md").read_bytes()
    state = {
        "version": 1,
        "tasks": {
            "task": {
                "digest": hashlib.sha256(raw).hexdigest(),
                "attempts": 2,
                "failed": False,
                "reason": "",
                "last_failure": "ralph was killed during this attempt",
                "failure_class": "",
            }
        },
    }
    (project.root / ".ralph").mkdir(exist_ok=True)
    (project.root / ".ralph" / "state.json").write_text(json.dumps(state))
    result = project.ralph("run", "--once", check_code=1)
    assert "Traceback" not in result.stderr
    task = project.status_json()["task"]
    assert task["state"] == "failed" and task["attempts"] == 2


def test_recovery_refuses_another_branch(project: Project) -> None:
    """An attempt interrupted on one branch is not cleaned up on another: exit 2, nothing moved."""
    project.spec("task")
    project.commit()
    start = project.head()
    project.git("checkout", "-q", "-b", "other")
    project.git("commit", "-q", "--allow-empty", "-m", "work on other")
    intent = {
        "task_id": "task",
        "attempt": 1,
        "start_commit": start,
        "branch": "main",
        "attempt_dir": str(project.root / ".ralph" / "attempts" / "task" / "1-x"),
    }
    (project.root / ".ralph").mkdir(exist_ok=True)
    (project.root / ".ralph" / "current.json").write_text(json.dumps(intent))
    other_tip = project.head()
    result = project.ralph("run", "--once", check_code=2)
    assert "check out main" in result.stderr
    assert project.head() == other_tip
    assert (project.root / ".ralph" / "current.json").exists()
