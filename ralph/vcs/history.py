"""Done-ness in git history: the tasks whose ``Ralph-Task`` trailer is on the work branch."""

from __future__ import annotations

from dataclasses import dataclass

from ralph.vcs.gitenv import Git

TASK_TRAILER = "Ralph-Task"


@dataclass
class DoneTasks:
    """The ids committed on a branch, read incrementally: a long-running daemon must not walk
    the whole history before every task.

    When the branch moved anywhere but forward (a reset, a rebase), the history is read again
    from scratch, so a task whose commit is gone is not done any more.
    """

    tip: str = ""
    ids: frozenset[str] = frozenset()

    def read(self, git: Git, branch: str) -> set[str]:
        """The task ids committed on ``branch``."""
        return self.read_ref(git, f"refs/heads/{branch}")

    def read_ref(self, git: Git, ref: str) -> set[str]:
        """The task ids committed in the history of ``ref`` (a branch, a remote's copy)."""
        tip = git.run("rev-parse", "-q", "--verify", ref, check=False).strip()
        if not tip:
            self.tip, self.ids = "", frozenset()
            return set()
        if tip == self.tip:
            return set(self.ids)
        forward = bool(self.tip) and is_ancestor(git, self.tip, tip)
        revisions = [f"{self.tip}..{tip}"] if forward else [tip]
        out = git.run(
            "log",
            f"--grep=^{TASK_TRAILER}:",
            f"--format=%(trailers:key={TASK_TRAILER},valueonly)",
            *revisions,
            "--",
            history=True,
        )
        found = {line.strip() for line in out.splitlines() if line.strip()}
        self.ids = frozenset(found | (self.ids if forward else set()))
        self.tip = tip
        return set(self.ids)


def is_ancestor(git: Git, older: str, newer: str) -> bool:
    """Whether ``older`` is in ``newer``'s history (False when either is gone)."""
    return git.status("merge-base", "--is-ancestor", older, newer, history=True) == 0


def branch_tip(git: Git, branch: str) -> str:
    """The commit ``branch`` points at ('' when it doesn't exist)."""
    return git.run("rev-parse", "-q", "--verify", f"refs/heads/{branch}", check=False).strip()
