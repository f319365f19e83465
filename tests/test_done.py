"""Done-ness is read from git incrementally, and read again when history changes."""

from __future__ import annotations

from conftest import Project

from ralph.vcs.repo import DoneTasks


def commit_task(project: Project, task: str) -> None:
    project.git("commit", "-q", "--allow-empty", "-m", f"{task}\n\nRalph-Task: {task}")


def test_incremental_reading_follows_new_commits(project: Project) -> None:
    """New task commits on top are found; the cached set holds the older ones."""
    done = DoneTasks()
    commit_task(project, "a")
    assert done.read(project.root) == {"a"}
    commit_task(project, "b")
    project.git("commit", "-q", "--allow-empty", "-m", "a person's commit")
    assert done.read(project.root) == {"a", "b"}


def test_history_rewritten_is_read_again(project: Project) -> None:
    """After a reset below the cached head, tasks no longer reachable are not done."""
    done = DoneTasks()
    commit_task(project, "a")
    base = project.head()
    commit_task(project, "b")
    assert done.read(project.root) == {"a", "b"}
    project.git("reset", "-q", "--hard", base)
    assert done.read(project.root) == {"a"}
    project.git("checkout", "-q", "-b", "other", "HEAD~1")
    assert done.read(project.root) == set()
