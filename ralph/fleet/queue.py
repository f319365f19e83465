"""One backlog shared by every ``ralph run`` through PostgreSQL, on procrastinate's tables.

Each process is one procrastinate worker (a heartbeat row) with up to ``slots`` claims.
ralph claims jobs itself instead of running procrastinate's worker: it needs the ``touches``
rule across processes, an ownership check on every finish, and cancellation, deadlines and
backoff of its own. Every query runs under a deadline; a server that is down or silent
raises ``QueueUnavailable``, never a hang.

Who may change a job, and why it happens once:
- offer: under one advisory lock, a task gets a job only when it has no live one (todo or
  doing), so a task is never queued twice, whoever offers it.
- claim: under one advisory lock, the best todo job whose touches overlap no doing job's
  becomes ``doing`` with this process's worker id.
- release and every claim-bound write check, in the same transaction, that the job is still
  ``doing`` under this worker: a process declared dead changes nothing late.
- reap: one process at a time (a try-lock) deletes the workers whose heartbeat is stale and
  requeues the doing jobs left without a worker, deciding staleness inside the lock.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime
from types import TracebackType
from typing import Any, NoReturn, Self

import anyio
import psycopg
import structlog
from procrastinate.exceptions import ConnectorException
from procrastinate.manager import JobManager
from procrastinate.psycopg_connector import PsycopgConnector
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from ralph.fleet import jobs
from ralph.fleet.errors import ClaimLost, DeclaredDead, QueueSetupError, QueueUnavailable
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
from ralph.fleet.schema import ensure_schema

log = structlog.get_logger("ralph")

_LOCKS = 0x72616C70  # "ralp": the first key of every advisory lock ralph takes
_CLAIM, _OFFER, _REAP = 2, 3, 4
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
_JOB_END = {Outcome.DONE: "succeeded", Outcome.FAILED: "failed", Outcome.DROPPED: "aborted"}


class FleetQueue:
    """The shared queue as one ``ralph run`` process sees it.

    ``open()`` then ``register()``; ``maintain()`` in the background (heartbeat and reap);
    ``offer``, ``claim``, ``release`` as tasks come and go; ``close()`` at the end.
    """

    def __init__(
        self,
        url: str,
        *,
        stall_timeout: float = 60.0,
        deadline: float = 10.0,
        connect_timeout: float = 5.0,
        schema: str = "ralph",
        max_connections: int = 4,
    ) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise QueueSetupError(f"queue: not a PostgreSQL URL: {exc}") from exc
        if not _SCHEMA_NAME.fullmatch(schema):
            raise QueueSetupError(f"queue: {schema!r} is not a plain PostgreSQL schema name")
        self.url = url
        self.where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
        self.where += f"/{params.get('dbname', '')}"
        self.cadence = Cadence.for_stall(stall_timeout)
        self.deadline = deadline
        self.connect_timeout = connect_timeout
        self.schema = schema
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.run_id = ""
        self._connect_args: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(connect_timeout)),  # libpq's floor is 2 s
            "application_name": f"ralph {self.host}:{self.pid}"[:63],
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        self._max_connections = max_connections
        self._pool: AsyncConnectionPool[jobs.Connection] | None = None
        # Only the connection-taking part of procrastinate's JobManager is used: it defers
        # on ralph's own connection, inside ralph's transaction.
        self._manager = JobManager(PsycopgConnector())
        self._worker_id: int | None = None
        self._dead = False
        self._held: dict[int, Claim] = {}
        self._beat_at = 0.0
        self._claiming = anyio.Lock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> bool:
        """Reach PostgreSQL, create or upgrade the queue's tables, open the pool.

        True when this call created the tables. Unreachable within ``connect_timeout``:
        ``QueueUnavailable``. Safe when several processes open one database at once.
        """
        with self._unavailable("connecting", self.connect_timeout):
            conn = await AsyncConnection.connect(self.url, autocommit=True, **self._connect_args)
        try:
            with self._unavailable("creating the queue's tables", self.deadline):
                created = await ensure_schema(conn, self.schema)
        finally:
            with anyio.move_on_after(self.deadline, shield=True):
                await conn.close()
        if created:
            log.info("ralph.queue_created", where=self.where, schema=self.schema)
        if self._pool is None:
            pool = self._new_pool()
            try:
                with self._unavailable("opening the pool", self.connect_timeout):
                    await pool.open(wait=True, timeout=self.connect_timeout)
            except QueueUnavailable:
                with anyio.move_on_after(self.deadline, shield=True):
                    await pool.close(timeout=0)
                raise
            self._pool = pool
        return created

    async def close(self) -> None:
        """Give back what this process holds, unregister, close the pool.

        With PostgreSQL gone, the others requeue the claims after ``stall_timeout``.
        """
        try:
            if self._worker_id is not None and not self._dead:
                await self._leave(self._worker_id)
        except QueueUnavailable as exc:
            log.warning("ralph.queue_left_uncleanly", error=str(exc))
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                with anyio.move_on_after(self.deadline, shield=True):
                    await pool.close(timeout=self.deadline)

    async def _leave(self, worker_id: int) -> None:
        for claim in list(self._held.values()):
            with suppress(ClaimLost):
                await self.release(claim, Outcome.RETRY)
        async with self._transaction("unregistering") as conn:
            await conn.execute("SELECT procrastinate_unregister_worker_v1(%s)", (worker_id,))
        self._worker_id = None

    # --- being one of the fleet ----------------------------------------------------------

    async def register(self, *, slots: int = 1, run_id: str = "") -> int:
        """Join the fleet as a worker with ``slots`` local worker slots; returns its id.

        Also the way back after ``DeclaredDead``: a new id, holding nothing.
        """
        if self._worker_id is not None and not self._dead:
            return self._worker_id
        started = time.monotonic()
        async with self._transaction("registering") as conn:
            row = await jobs.one(conn, "SELECT worker_id FROM procrastinate_register_worker_v1()")
            worker_id = int(row[0])
            await conn.execute(
                "INSERT INTO ralph_holders (worker_id, host, pid, slots, run_id)"
                " VALUES (%s, %s, %s, %s, %s)",
                (worker_id, self.host, self.pid, slots, run_id),
            )
        self._worker_id, self._dead, self.run_id = worker_id, False, run_id
        self._held.clear()
        self._beat_at = started
        log.info("ralph.fleet_joined", worker=worker_id, host=self.host, pid=self.pid, slots=slots)
        return worker_id

    async def heartbeat(self) -> None:
        """Tell the others this process is alive.

        Raises ``DeclaredDead`` when they already gave its tasks away; then it must start
        no new work. Also gives back jobs recorded under this worker that no claim holds
        (a claim whose answer a deadline cut off).
        """
        worker_id = self._worker()
        started = time.monotonic()
        async with self._transaction("heartbeat") as conn:
            alive = await jobs.touch(conn, worker_id)
            ghosts = await self._requeue_ghosts(conn, worker_id) if alive else []
        if not alive:
            self._declared_dead()
        self._beat_at = started
        if ghosts:
            log.warning("ralph.fleet_gave_back_unheld", jobs=ghosts)

    def lease_left(self) -> float:
        """Seconds before the others may declare this process dead, one heartbeat spared.

        At 0 or less (PostgreSQL unreachable for that long) act as if they had: stop the
        agents, push nothing.
        """
        cadence = self.cadence
        return self._beat_at + cadence.reap_after - cadence.heartbeat_every - time.monotonic()

    async def maintain(self) -> NoReturn:
        """Heartbeat every ``cadence.heartbeat_every``, and reap, until declared dead.

        It reaps only once it has heard PostgreSQL for ``reap_after`` in a row: after an
        outage every process's heartbeat is stale, and each gets the time to beat again
        before anyone is declared dead. PostgreSQL unreachable: keeps trying, says so once
        per outage; ``lease_left`` tells the caller when to stop its agents.
        Raises ``DeclaredDead``.
        """
        heard_since: float | None = None
        down_since: float | None = None
        while True:
            started = time.monotonic()
            try:
                await self.heartbeat()
                heard_since = started if heard_since is None else heard_since
                if started - heard_since >= self.cadence.reap_after:
                    await self.reap()
            except QueueUnavailable as exc:
                heard_since = None
                if down_since is None:
                    down_since = started
                    log.warning("ralph.queue_unreachable", where=self.where, error=str(exc))
            else:
                if down_since is not None:
                    outage = round(started - down_since, 1)
                    log.info("ralph.queue_reachable", where=self.where, after_s=outage)
                    down_since = None
            await anyio.sleep(self.cadence.heartbeat_every)

    @property
    def held(self) -> tuple[Claim, ...]:
        """The claims this process holds now."""
        return tuple(self._held.values())

    # --- tasks ---------------------------------------------------------------------------

    async def offer(self, tasks: Iterable[Offer]) -> list[str]:
        """Queue each runnable task unless it has a live job; returns the ids (re)queued.

        A task waiting with an older spec is brought up to date; one done or failed with
        the same spec digest is left out, so an offer from a stale view of the remote is
        harmless. Any process may offer, any number of times.
        """
        wanted = {task.task_id: task for task in tasks}
        if not wanted:
            return []
        async with self._transaction("offering tasks") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCKS, _OFFER))
            # Live jobs first: a release commits the job's end and the task's record at
            # once, so a job this misses as live is seen as settled below.
            live = await jobs.live_jobs(conn, list(wanted))
            settled = await jobs.settled_digests(conn, list(wanted))
            new: list[Offer] = []
            refreshed: list[str] = []
            for task_id, task in sorted(wanted.items()):
                if settled.get(task_id) == task.digest:
                    continue
                found = live.get(task_id)
                if found is None:
                    new.append(task)
                elif found[1] == "todo" and found[2] != jobs.job_args(task):
                    await conn.execute(
                        "UPDATE procrastinate_jobs SET args = %s, priority = %s"
                        " WHERE id = %s AND status = 'todo'",
                        (Jsonb(jobs.job_args(task)), jobs.job_priority(task), found[0]),
                    )
                    refreshed.append(task_id)
            if new:
                await self._manager.batch_defer_jobs_async(
                    [jobs.new_job(t) for t in new], connection=conn
                )
        return sorted([task.task_id for task in new] + refreshed)

    async def claim(self, exclude_touches: Sequence[str] = ()) -> Claim | None:
        """Take the best waiting task for one local worker slot, or None.

        Best: ralph's priority, then the spec path. Skipped: tasks whose ``touches``
        overlap a task any process holds, or ``exclude_touches``.
        """
        worker_id = self._worker()
        started = time.monotonic()
        async with self._claiming:
            async with self._transaction("claiming a task") as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCKS, _CLAIM))
                alive = await jobs.touch(conn, worker_id)
                claim = await jobs.claim_in(conn, worker_id, exclude_touches) if alive else None
            if not alive:
                self._declared_dead()
            self._beat_at = started
            if claim is not None:
                self._held[claim.job_id] = claim
        return claim

    async def check(self, claim: Claim) -> None:
        """Raise ``ClaimLost`` unless this process still holds ``claim`` (before a push)."""
        async with self._transaction("checking a claim") as conn:
            owned = await jobs.owned(conn, claim)
        if not owned:
            self._lost(claim)

    async def release(
        self, claim: Claim, outcome: Outcome, *, reason: str = "", delay: float = 0.0
    ) -> None:
        """End a claim (see ``Outcome``); ``reason`` is kept with FAILED, RETRY waits
        ``delay`` seconds. Raises ``ClaimLost``, changing nothing, if it was taken over."""
        async with self._transaction("releasing a task") as conn:
            owned = await jobs.owned(conn, claim)
            if owned and outcome is Outcome.RETRY:
                await conn.execute(
                    "SELECT procrastinate_retry_job_v2("
                    "%s, now() + make_interval(secs => %s), NULL, NULL, NULL)",
                    (claim.job_id, max(0.0, delay)),
                )
            elif owned:
                await conn.execute(
                    "SELECT procrastinate_finish_job_v1(%s, %s, false)",
                    (claim.job_id, _JOB_END[outcome]),
                )
            if owned and outcome in (Outcome.DONE, Outcome.FAILED):
                await jobs.settle(conn, claim.task_id, claim.digest, outcome, reason)
        self._held.pop(claim.job_id, None)
        if not owned:
            self._lost(claim)

    async def reap(self, older_than: float | None = None) -> list[str]:
        """Requeue the tasks of processes silent for ``older_than`` seconds (default
        ``cadence.reap_after``); returns their ids. One process reaps at a time; a task is
        requeued once per death."""
        seconds = self.cadence.reap_after if older_than is None else older_than
        async with self._transaction("reaping") as conn:
            got = await jobs.one(conn, "SELECT pg_try_advisory_xact_lock(%s, %s)", (_LOCKS, _REAP))
            reaped = await jobs.reap_in(conn, seconds) if got[0] else []
        for task_id, host, pid in reaped:
            log.warning("ralph.fleet_took_back", task=task_id, host=host, pid=pid)
        return sorted(task_id for task_id, _, _ in reaped)

    # --- what ralph remembers per task and per run ----------------------------------------

    async def record_attempt(self, claim: Claim) -> int:
        """Count one more attempt at a claimed task; returns its number across the fleet
        (1 again once the spec changed). Raises ``ClaimLost`` if it was taken over."""
        async with self._transaction("recording an attempt") as conn:
            owned = await jobs.owned(conn, claim)
            number = 0
            if owned:
                row = await jobs.one(
                    conn,
                    "INSERT INTO ralph_tasks AS t (task_id, digest, attempts) VALUES (%s, %s, 1)"
                    " ON CONFLICT (task_id) DO UPDATE SET"
                    " attempts = CASE WHEN t.digest = EXCLUDED.digest"
                    " THEN t.attempts + 1 ELSE 1 END,"
                    " ended = CASE WHEN t.digest = EXCLUDED.digest THEN t.ended ELSE '' END,"
                    " reason = CASE WHEN t.digest = EXCLUDED.digest THEN t.reason ELSE '' END,"
                    " digest = EXCLUDED.digest, updated_at = now()"
                    " RETURNING attempts",
                    (claim.task_id, claim.digest),
                )
                number = int(row[0])
        if not owned:
            self._lost(claim)
        return number

    async def mark_failed(self, task_id: str, digest: str, reason: str) -> None:
        """Record the task as failed for this spec digest: it is not queued again until
        the spec changes or ``retry_task``."""
        async with self._transaction("marking a task failed") as conn:
            await jobs.settle(conn, task_id, digest, Outcome.FAILED, reason)

    async def retry_task(self, task_id: str) -> bool:
        """``ralph retry``: forget how the task ended and its attempts; False if nothing
        was kept."""
        async with self._transaction("forgetting a task's end") as conn:
            cursor = await conn.execute(
                "UPDATE ralph_tasks SET ended = '', reason = '', attempts = 0,"
                " updated_at = now() WHERE task_id = %s RETURNING task_id",
                (task_id,),
            )
            return await cursor.fetchone() is not None

    async def task_records(self) -> dict[str, TaskRecord]:
        """Every task the fleet attempted or failed, with its spend."""
        async with self._transaction("reading task records") as conn:
            cursor = await conn.execute(
                "SELECT t.task_id, t.digest, t.attempts, t.ended, t.reason,"
                " COALESCE(s.usd, 0) FROM ralph_tasks t LEFT JOIN"
                " (SELECT task_id, sum(usd) AS usd FROM ralph_spend GROUP BY task_id) s"
                " USING (task_id) ORDER BY t.task_id"
            )
            rows = await cursor.fetchall()
        return {
            str(row[0]): TaskRecord(
                task_id=str(row[0]),
                digest=str(row[1]),
                attempts=int(row[2]),
                done=row[3] == "done",
                failed=row[3] == "failed",
                reason=str(row[4]),
                spend_usd=float(row[5]),
            )
            for row in rows
        }

    async def add_spend(self, usd: float, *, task_id: str | None = None) -> None:
        """Add what an agent reported it cost, for this run and optionally a task."""
        if usd <= 0:
            return
        async with self._transaction("recording spend") as conn:
            await conn.execute(
                "INSERT INTO ralph_spend (run_id, host, task_id, usd) VALUES (%s, %s, %s, %s)",
                (self.run_id, self.host, task_id, usd),
            )

    async def total_spend(
        self, *, run_id: str | None = None, since: datetime | None = None
    ) -> float:
        """What the fleet spent: all runs, or one ``run_id``, optionally ``since`` a time."""
        async with self._transaction("reading spend") as conn:
            row = await jobs.one(
                conn,
                "SELECT COALESCE(sum(usd), 0) FROM ralph_spend"
                " WHERE (%(run)s::text IS NULL OR run_id = %(run)s)"
                " AND (%(since)s::timestamptz IS NULL OR at >= %(since)s)",
                {"run": run_id, "since": since},
            )
        return float(row[0])

    # --- what the fleet looks like -------------------------------------------------------

    async def holders(self) -> list[Holder]:
        """Who holds which task now, for ``ralph status``."""
        async with self._transaction("listing holders") as conn:
            cursor = await conn.execute(
                "SELECT j.args->>'task_id', j.id, h.host, h.pid,"
                " (SELECT max(e.at) FROM procrastinate_events e"
                "   WHERE e.job_id = j.id AND e.type = 'started'),"
                " extract(epoch FROM now() - w.last_heartbeat)::float8"
                " FROM procrastinate_jobs j"
                " LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
                " LEFT JOIN ralph_holders h ON h.worker_id = j.worker_id"
                " WHERE j.queue_name = %s AND j.status = 'doing' ORDER BY 1",
                (jobs.QUEUE,),
            )
            rows = await cursor.fetchall()
        reap_after = self.cadence.reap_after
        return [
            Holder(
                task_id=str(task_id),
                job_id=int(job_id),
                host=host,
                pid=pid,
                since=since,
                heartbeat_age=age,
                stalled=host is None or age is None or age > reap_after,
            )
            for task_id, job_id, host, pid, since, age in rows
        ]

    async def peers(self) -> list[Peer]:
        """Every registered process, busy or idle."""
        async with self._transaction("listing processes") as conn:
            cursor = await conn.execute(
                "SELECT h.worker_id, h.host, h.pid, h.slots, h.run_id, h.since,"
                " extract(epoch FROM now() - w.last_heartbeat)::float8,"
                " (SELECT count(*) FROM procrastinate_jobs j"
                "   WHERE j.worker_id = h.worker_id AND j.status = 'doing')"
                " FROM ralph_holders h JOIN procrastinate_workers w ON w.id = h.worker_id"
                " ORDER BY h.host, h.pid"
            )
            rows = await cursor.fetchall()
        return [
            Peer(int(r[0]), r[1], int(r[2]), int(r[3]), r[4], r[5], float(r[6]), int(r[7]))
            for r in rows
        ]

    async def stats(self) -> QueueStats:
        """Jobs by status, requeues and stalls, for ``ralph stats``."""
        async with self._transaction("reading queue stats") as conn:
            by_status = await (
                await conn.execute(
                    "SELECT status::text, count(*) FROM procrastinate_jobs"
                    " WHERE queue_name = %s GROUP BY status",
                    (jobs.QUEUE,),
                )
            ).fetchall()
            row = await jobs.one(
                conn,
                "SELECT (SELECT count(*) FROM procrastinate_events e"
                "  JOIN procrastinate_jobs j ON j.id = e.job_id"
                "  WHERE j.queue_name = %s AND e.type = 'deferred_for_retry'),"
                " (SELECT count(*) FROM ralph_reaps), (SELECT count(*) FROM ralph_holders)",
                (jobs.QUEUE,),
            )
        return QueueStats(
            jobs={str(status): int(count) for status, count in by_status},
            retries=int(row[0]),
            stalls=int(row[1]),
            peers=int(row[2]),
        )

    # --- plumbing ------------------------------------------------------------------------

    def _new_pool(self) -> AsyncConnectionPool[jobs.Connection]:
        """A pool of its own per open(): a pool that failed to open can't be reused."""
        return AsyncConnectionPool(
            self.url,
            open=False,
            min_size=1,
            max_size=self._max_connections,
            timeout=self.deadline,
            kwargs=self._connect_args,
            configure=self._configure,
            check=AsyncConnectionPool.check_connection,
            name="ralph-queue",
        )

    async def _configure(self, conn: jobs.Connection) -> None:
        await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        await conn.commit()

    @contextmanager
    def _unavailable(self, doing: str, seconds: float) -> Iterator[None]:
        """Within ``seconds``, or ``QueueUnavailable`` saying what was being done."""
        try:
            with anyio.fail_after(seconds):
                yield
        except TimeoutError as exc:
            raise QueueUnavailable(
                f"queue: PostgreSQL at {self.where} did not answer within {seconds:g}s ({doing})"
            ) from exc
        except _CONNECTION_ERRORS as exc:
            raise QueueUnavailable(_unreachable(self.where, doing, exc)) from exc
        except ConnectorException as exc:
            if isinstance(exc.__cause__, _CONNECTION_ERRORS):
                raise QueueUnavailable(_unreachable(self.where, doing, exc.__cause__)) from exc
            raise

    @asynccontextmanager
    async def _transaction(self, doing: str) -> AsyncIterator[jobs.Connection]:
        if self._pool is None:
            raise RuntimeError("FleetQueue.open() must come first")
        with self._unavailable(doing, self.deadline):
            async with self._pool.connection() as conn, conn.transaction():
                yield conn

    def _worker(self) -> int:
        if self._dead:
            raise DeclaredDead(
                f"queue: this process (worker {self._worker_id}) was declared dead; "
                "it starts no new work until it registers again"
            )
        if self._worker_id is None:
            raise RuntimeError("FleetQueue.register() must come first")
        return self._worker_id

    def _declared_dead(self) -> NoReturn:
        self._dead = True
        lost = sorted(claim.task_id for claim in self._held.values())
        self._held.clear()
        log.error("ralph.fleet_declared_dead", worker=self._worker_id, lost=lost)
        raise DeclaredDead(
            f"queue: the other processes declared this one ({self.host} pid {self.pid}, "
            f"worker {self._worker_id}) dead after {self.cadence.reap_after:g}s without a "
            f"heartbeat and took over its tasks {lost}; it starts no new work"
        )

    def _lost(self, claim: Claim) -> NoReturn:
        self._held.pop(claim.job_id, None)
        log.warning("ralph.fleet_claim_lost", task=claim.task_id, job=claim.job_id)
        raise ClaimLost(
            f"queue: task {claim.task_id} is no longer held by this process "
            "(another took it over); nothing was changed"
        )

    async def _requeue_ghosts(self, conn: jobs.Connection, worker_id: int) -> list[int]:
        """Give back doing jobs under this worker that no claim holds; skipped while a
        claim is under way (its job isn't in ``_held`` yet)."""
        try:
            self._claiming.acquire_nowait()
        except anyio.WouldBlock:
            return []
        try:
            return await jobs.give_back_unheld(conn, worker_id, list(self._held))
        finally:
            self._claiming.release()


def _unreachable(where: str, doing: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"queue: PostgreSQL at {where} unreachable ({doing}): {first}"
