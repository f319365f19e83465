"""The expected ways the shared queue fails, each with the exit code the contract gives it."""

from __future__ import annotations

from ralph.errors import RalphError, UsageError


class FleetError(RalphError):
    """Something about the shared queue stops this process from taking work."""


class QueueUnavailable(FleetError):
    """PostgreSQL can't be reached, or didn't answer within the deadline.

    EX_TEMPFAIL: ``ralph run --once`` exits with it so cron tries later; the daemon waits
    with backoff (``retrying``) and says so.
    """

    exit_code = 75


class DeclaredDead(FleetError):
    """The other processes declared this one dead (its heartbeat went stale) and gave its
    tasks to others: it must start no new work and push nothing it still holds."""

    exit_code = 75


class ClaimLost(FleetError):
    """A task this process claimed is no longer its own: the claim was taken over."""

    exit_code = 75


class QueueSetupError(UsageError):
    """The ``queue`` setting or its database rules out working: a URL that isn't
    PostgreSQL's, or a schema that isn't ralph's or was upgraded by a newer ralph."""
