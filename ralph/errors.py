"""The expected ways ralph stops: each carries the exit code the contract gives it."""

from __future__ import annotations


class RalphError(Exception):
    """An expected failure, reported as one clear line; never a traceback."""

    exit_code = 1


class UsageError(RalphError):
    """The command line, the settings or the repository rule out doing anything."""

    exit_code = 2


class SettingsError(UsageError):
    """A setting is unknown, missing or has a bad value; the message names key and source."""


class RepositoryError(UsageError):
    """The repository is not in a state ralph may work in (not git, dirty, detached...)."""


class LockHeld(RalphError):
    """Another ralph holds this repository's lock (EX_TEMPFAIL, so cron may try later)."""

    exit_code = 75
