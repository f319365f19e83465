"""Every way an attempt ends, as one enum: the words of events, stats and ``ralph status``.

The agent's own failures (its model API refused it, it crashed, it ran too long), what the
gate found in the change, what the checks said, and the endings that are no failure at all.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """How an attempt ended."""

    COMMITTED = "committed"
    """Every check passed; the change is on the branch."""
    ALREADY_DONE = "already_done"
    """Passed, but the branch already had the task: nothing committed twice."""
    INTERRUPTED = "interrupted"
    """ralph was asked to stop (signal, deadline) or was killed: the attempt doesn't count."""

    AUTH = "auth"
    """The agent CLI could not authenticate: nothing works until a person fixes it."""
    USAGE_LIMIT = "usage_limit"
    """The account's usage or rate limit: waited out, the attempt doesn't count."""
    API_OUTAGE = "api_outage"
    """The model API is down or overloaded: waited out, the attempt doesn't count."""
    TIMEOUT = "timeout"
    """The agent ran past its attempt timeout."""
    CRASH = "crash"
    """The agent exited non-zero."""

    NO_CHANGES = "no_changes"
    """The agent changed nothing (and the spec doesn't allow that)."""
    PROTECTED = "protected"
    """The change touches a protected path."""
    APPEND_ONLY = "append_only"
    """The change modifies or deletes an existing file in an append-only path."""
    GIT_TAMPERED = "git_tampered"
    """The agent changed ``.git`` itself (hooks, config, excludes)."""
    OUTSIDE_TOUCHES = "outside_touches"
    """The change touches paths outside the task's declared ``touches``: the schedule
    relied on it."""
    SECRET = "secret"
    """The change adds a secret (a key, a token, a private key): never committed."""
    STALLED = "stalled"
    """The agent printed nothing for ``agent_stall_timeout``: stopped, like a timeout."""
    NESTED_REPO = "nested_repo"
    """The change holds a nested repository (a gitlink) a clone couldn't check out."""
    SYMLINK = "symlink"
    """The change holds a symlink that points outside the repository."""

    CHECK_FAILED = "check_failed"
    """A check exited non-zero or ran past the check timeout."""
    COMMIT_REJECTED = "commit_rejected"
    """git refused ralph's commit (a hook, with ``run_hooks``)."""
    CONFLICT = "conflict"
    """The change no longer applies where the branch is now, or a person's uncommitted work
    is in its way: nobody's fault, the next attempt starts from the new tip."""

    @property
    def counts(self) -> bool:
        """Whether an attempt that ended so uses up one of the task's attempts."""
        return self not in UNCOUNTED

    @property
    def passed(self) -> bool:
        """Whether the task is done after an attempt that ended so."""
        return self in (Reason.COMMITTED, Reason.ALREADY_DONE)


TRANSIENT = frozenset({Reason.USAGE_LIMIT, Reason.API_OUTAGE})
"""Nobody's fault: ralph waits and runs the same attempt again."""

UNCOUNTED = frozenset({Reason.INTERRUPTED, Reason.AUTH, Reason.CONFLICT, *TRANSIENT})
