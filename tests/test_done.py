"""Done-ness is read from the work branch's history, incrementally, and read again when
history changes; what an agent writes into .git can't hide a done task."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import Project

from ralph.vcs.gitenv import Git, GitEnv
from ralph.vcs.history import DoneTasks


def commit_task(project: Project, task: str) -> None:
    project.git("commit", "-q", "--allow-empty", "-m", f"{task}\n\nRalph-Task: {task}")


@pytest.fixture
def git(project: Project) -> Iterator[Git]:
    """ralph's git for the project, its snapshot taken now."""
    env = GitEnv.for_process(project.root, dict(os.environ))
    yield Git(project.root, env)
    env.discard()


def test_incremental_reading_follows_new_commits(project: Project, git: Git) -> None:
    """New task commits on top are found; the cached set holds the older ones."""
    done = DoneTasks()
    commit_task(project, "a")
    assert done.read(git, "main") == {"a"}
    commit_task(project, "b")
    project.git("commit", "-q", "--allow-empty", "-m", "a person's commit")
    assert done.read(git, "main") == {"a", "b"}


def test_history_rewritten_is_read_again(project: Project, git: Git) -> None:
    """After a reset below the cached tip, tasks no longer reachable are not done."""
    done = DoneTasks()
    commit_task(project, "a")
    base = project.head()
    commit_task(project, "b")
    assert done.read(git, "main") == {"a", "b"}
    project.git("reset", "-q", "--hard", base)
    assert done.read(git, "main") == {"a"}
    project.git("branch", "-q", "other", "HEAD~1")
    assert done.read(git, "other") == set()


def test_a_forged_shallow_file_hides_no_done_task(project: Project) -> None:
    """`git rev-parse HEAD > .git/shallow` written after ralph started can't cut history
    short: done tasks below it are still done (issue: a task committed twice)."""
    commit_task(project, "a")
    commit_task(project, "b")
    env = GitEnv.for_process(project.root, dict(os.environ))
    try:
        (project.root / ".git" / "shallow").write_text(project.head() + "\n")
        assert project.git("log", "--format=%s").split() == ["b"]  # plain git is fooled
        assert DoneTasks().read(Git(project.root, env), "main") == {"a", "b"}
    finally:
        env.discard()


def test_replace_refs_and_grafts_change_nothing(project: Project, git: Git) -> None:
    """A replace ref or a graft that rewires history is ignored when ralph reads it."""
    commit_task(project, "a")
    first = project.head()
    project.git("commit", "-q", "--allow-empty", "-m", "a person's commit")
    second = project.head()
    root = project.git("rev-list", "--max-parents=0", "HEAD").strip()
    # Make `second` appear to have the root as its only parent, skipping task a.
    project.git("replace", "--graft", second, root)
    (project.root / ".git" / "info" / "grafts").write_text(f"{second} {root}\n")
    assert first not in project.git("log", "--format=%H").split()  # plain git is fooled
    assert DoneTasks().read(git, "main") == {"a"}
