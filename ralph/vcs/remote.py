"""The remote copy of the work branch: fetched, and pushed to only as a fast-forward."""

from __future__ import annotations

from ralph.vcs.gitenv import Git


def remote_ref(remote: str, branch: str) -> str:
    return f"refs/remotes/{remote}/{branch}"


def fetch(git: Git, remote: str, branch: str) -> str:
    """Fetch the remote's branch; its tip ('' when the remote has no such branch yet)."""
    refspec = f"+refs/heads/{branch}:{remote_ref(remote, branch)}"
    git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", remote, refspec)
    return git.run("rev-parse", "-q", "--verify", remote_ref(remote, branch), check=False).strip()


def push(git: Git, remote: str, branch: str, commit: str) -> tuple[bool, str]:
    """Push ``commit`` as the remote's ``branch``: only a fast-forward, so a push that lost a
    race to another process is rejected, never forced. Returns (accepted, what git said)."""
    done = git.attempt("push", "--quiet", "--porcelain", remote, f"{commit}:refs/heads/{branch}")
    if done.ok:
        git.run("update-ref", remote_ref(remote, branch), commit)
    return done.ok, done.stderr
