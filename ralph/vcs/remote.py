"""The remote copy of the work branch: fetched, and pushed to only as a fast-forward."""

from __future__ import annotations

import threading
import time

from ralph.vcs.gitenv import Git, GitFailed

FETCH_TRIES = 3
_FETCHING = threading.Lock()


def remote_ref(remote: str, branch: str) -> str:
    return f"refs/remotes/{remote}/{branch}"


def fetch(git: Git, remote: str, branch: str) -> str:
    """Fetch the remote's branch; its tip ('' when the remote has no such branch yet).

    One fetch at a time in this process (workers land in parallel), and a fetch that lost
    the race for the remote-tracking ref to another git (yours) is tried again."""
    refspec = f"+refs/heads/{branch}:{remote_ref(remote, branch)}"
    argv = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, refspec)
    with _FETCHING:
        for tries in range(FETCH_TRIES):
            try:
                git.run(*argv)
                break
            except GitFailed as exc:
                if "cannot lock ref" not in str(exc) or tries == FETCH_TRIES - 1:
                    raise
                time.sleep(0.2 * (tries + 1))
        return git.run(
            "rev-parse", "-q", "--verify", remote_ref(remote, branch), check=False
        ).strip()


def push(git: Git, remote: str, branch: str, commit: str) -> tuple[bool, str]:
    """Push ``commit`` as the remote's ``branch``: only a fast-forward, so a push that lost a
    race to another process is rejected, never forced. Returns (accepted, what git said)."""
    done = git.attempt("push", "--quiet", "--porcelain", remote, f"{commit}:refs/heads/{branch}")
    if done.ok:
        git.run("update-ref", remote_ref(remote, branch), commit)
    return done.ok, done.stderr
