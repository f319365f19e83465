"""Many machines: one backlog shared by every ``ralph run`` through PostgreSQL.

Imported only when the ``queue`` setting is set: it needs the ``ralphd[queue]`` extra
(procrastinate, psycopg 3 and its pool). See docs/distributed.md.
"""

from ralph.fleet.backoff import retrying
from ralph.fleet.errors import (
    ClaimLost,
    DeclaredDead,
    FleetError,
    QueueSetupError,
    QueueUnavailable,
)
from ralph.fleet.queue import FleetQueue
from ralph.fleet.records import (
    Cadence,
    Claim,
    Holder,
    Offer,
    Outcome,
    Peer,
    QueueStats,
    TaskRecord,
)
from ralph.fleet.touches import overlap

__all__ = [
    "Cadence",
    "Claim",
    "ClaimLost",
    "DeclaredDead",
    "FleetError",
    "FleetQueue",
    "Holder",
    "Offer",
    "Outcome",
    "Peer",
    "QueueSetupError",
    "QueueStats",
    "QueueUnavailable",
    "TaskRecord",
    "overlap",
    "retrying",
]
