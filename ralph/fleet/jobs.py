"""What one transaction does to the queue's rows: claim, reap, ownership, offers' lookups.

Each function runs inside a transaction ``FleetQueue`` opened (under its deadline, and
under the advisory lock its caller needs); none opens or commits anything itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

from procrastinate.jobs import Job
from psycopg import AsyncConnection

from ralph.fleet.records import Claim, Offer, Outcome
from ralph.fleet.touches import conflicts

QUEUE = "ralph"
TASK_NAME = "ralph.task"
_PRIORITY_LIMIT = 2**31 - 1

Connection: TypeAlias = AsyncConnection[tuple[Any, ...]]


async def one(conn: Connection, query: Any, params: Any = None) -> tuple[Any, ...]:
    """The row a query always returns."""
    row = await (await conn.execute(query, params)).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row


async def touch(conn: Connection, worker_id: int) -> bool:
    """Renew this worker's heartbeat; False when its row is gone (declared dead)."""
    cursor = await conn.execute(
        "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s RETURNING id",
        (worker_id,),
    )
    return await cursor.fetchone() is not None


async def owned(conn: Connection, claim: Claim) -> bool:
    """Whether the claim's job is still doing under its worker (row locked until commit)."""
    cursor = await conn.execute(
        "SELECT 1 FROM procrastinate_jobs WHERE id = %s AND status = 'doing'"
        " AND worker_id = %s FOR UPDATE",
        (claim.job_id, claim.worker_id),
    )
    return await cursor.fetchone() is not None


async def claim_in(
    conn: Connection, worker_id: int, exclude_touches: Sequence[str]
) -> Claim | None:
    """The claim itself, under the claim lock: no other claim can slip in between the
    look at what is held and the update."""
    held = await conn.execute(
        "SELECT args->'touches' FROM procrastinate_jobs WHERE queue_name = %s AND status = 'doing'",
        (QUEUE,),
    )
    busy = [tuple(row[0] or ()) for row in await held.fetchall()]
    busy.append(tuple(exclude_touches))
    waiting = await conn.execute(
        "SELECT id, args, attempts FROM procrastinate_jobs j"
        " WHERE queue_name = %s AND status = 'todo'"
        " AND (scheduled_at IS NULL OR scheduled_at <= now())"
        " AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs o"
        "   WHERE o.lock = j.lock AND o.status = 'doing')"
        " ORDER BY priority DESC, args->>'path', id",
        (QUEUE,),
    )
    for job_id, args, requeues in await waiting.fetchall():
        touches = tuple(str(glob) for glob in args.get("touches", ()))
        if conflicts(touches, busy):
            continue
        taken = await conn.execute(
            "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s"
            " WHERE id = %s AND status = 'todo' RETURNING id",
            (worker_id, job_id),
        )
        if await taken.fetchone() is not None:
            return Claim(
                job_id=int(job_id),
                task_id=str(args["task_id"]),
                digest=str(args["digest"]),
                touches=touches,
                worker_id=worker_id,
                requeues=int(requeues),
            )
    return None


async def reap_in(conn: Connection, seconds: float) -> list[tuple[str, str | None, int | None]]:
    """The reap itself, under the reap lock: (task id, host, pid) of each task taken back.

    Procrastinate's prune of stalled workers and retry of their jobs, on rows locked first:
    a heartbeat that comes late waits for this reap and then finds its row gone; a release
    under way commits first, and its job is no longer doing when the lock is granted.
    """
    stale = await conn.execute(
        "SELECT w.id, h.host, h.pid FROM procrastinate_workers w"
        " LEFT JOIN ralph_holders h ON h.worker_id = w.id"
        " WHERE w.last_heartbeat < now() - make_interval(secs => %s) FOR UPDATE OF w",
        (seconds,),
    )
    who = {int(row[0]): (row[1], row[2]) for row in await stale.fetchall()}
    held = await conn.execute(
        "SELECT id, args->>'task_id', worker_id FROM procrastinate_jobs"
        " WHERE queue_name = %s AND status = 'doing'"
        " AND (worker_id IS NULL OR worker_id = ANY(%s)) FOR UPDATE",
        (QUEUE, list(who)),
    )
    jobs = await held.fetchall()
    await conn.execute("DELETE FROM procrastinate_workers WHERE id = ANY(%s)", (list(who),))
    reaped: list[tuple[str, str | None, int | None]] = []
    for job_id, task_id, worker_id in jobs:
        host, pid = who.get(worker_id, (None, None))
        await conn.execute(
            "SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)", (job_id,)
        )
        await conn.execute(
            "INSERT INTO ralph_reaps (job_id, task_id, worker_id, host, pid)"
            " VALUES (%s, %s, %s, %s, %s)",
            (job_id, task_id, worker_id, host, pid),
        )
        reaped.append((str(task_id), host, pid))
    return reaped


async def give_back_unheld(conn: Connection, worker_id: int, held: list[int]) -> list[int]:
    """Requeue the doing jobs under ``worker_id`` other than ``held``; returns their ids."""
    cursor = await conn.execute(
        "SELECT id FROM procrastinate_jobs WHERE worker_id = %s AND status = 'doing'"
        " AND queue_name = %s AND NOT (id = ANY(%s)) FOR UPDATE",
        (worker_id, QUEUE, held),
    )
    unheld = [int(row[0]) for row in await cursor.fetchall()]
    for job_id in unheld:
        await conn.execute(
            "SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)", (job_id,)
        )
    return unheld


async def live_jobs(conn: Connection, task_ids: list[str]) -> dict[str, tuple[int, str, Any]]:
    """Each task's job that is todo or doing: (job id, status, args)."""
    cursor = await conn.execute(
        "SELECT lock, id, status::text, args FROM procrastinate_jobs"
        " WHERE queue_name = %s AND status IN ('todo', 'doing') AND lock = ANY(%s)",
        (QUEUE, task_ids),
    )
    return {str(row[0]): (int(row[1]), str(row[2]), row[3]) for row in await cursor.fetchall()}


async def settled_digests(conn: Connection, task_ids: list[str]) -> dict[str, str]:
    """The digest each task was done or failed with."""
    cursor = await conn.execute(
        "SELECT task_id, digest FROM ralph_tasks WHERE ended <> '' AND task_id = ANY(%s)",
        (task_ids,),
    )
    return {str(row[0]): str(row[1]) for row in await cursor.fetchall()}


async def settle(
    conn: Connection, task_id: str, digest: str, outcome: Outcome, reason: str
) -> None:
    """Record how the task ended for this digest (attempts restart with a new digest)."""
    await conn.execute(
        "INSERT INTO ralph_tasks AS t (task_id, digest, ended, reason) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (task_id) DO UPDATE SET ended = EXCLUDED.ended, reason = EXCLUDED.reason,"
        " attempts = CASE WHEN t.digest = EXCLUDED.digest THEN t.attempts ELSE 0 END,"
        " digest = EXCLUDED.digest, updated_at = now()",
        (task_id, digest, outcome.value, reason),
    )


def job_args(task: Offer) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "digest": task.digest,
        "priority": task.priority,
        "path": task.path,
        "touches": list(task.touches),
    }


def job_priority(task: Offer) -> int:
    """procrastinate runs higher priorities first, ralph lower ones."""
    return max(-_PRIORITY_LIMIT, min(_PRIORITY_LIMIT, -task.priority))


def new_job(task: Offer) -> Job:
    # lock: procrastinate never lets two jobs of one task be doing at once (a second guard
    # behind the offer lock); queueing_lock: nor two waiting.
    return Job(
        queue=QUEUE,
        task_name=TASK_NAME,
        lock=task.task_id,
        queueing_lock=task.task_id,
        priority=job_priority(task),
        task_kwargs=job_args(task),
    )
