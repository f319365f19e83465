"""The shared queue (ralph.fleet) on a real PostgreSQL, with real processes where it matters.

The peers are this file run as a program (``python tests/test_fleet.py ROLE CONFIG``): each
prints one JSON line per thing it did, and logs to stderr.
"""

from __future__ import annotations

import ast
import json
import os
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

pytest.register_assert_rewrite("postgres")  # before the import, as pytest_plugins loads it

from postgres import Relay, needs  # noqa: E402

needs("procrastinate")

import psycopg  # noqa: E402

from ralph.fleet import (  # noqa: E402
    ClaimLost,
    DeclaredDead,
    FleetQueue,
    Offer,
    Outcome,
    QueueSetupError,
    QueueUnavailable,
    overlap,
    retrying,
)

pytest_plugins = ["postgres"]

QUEUE_LIBRARIES = {"procrastinate", "psycopg", "psycopg_pool"}
STALL = 3.0  # heartbeat and reap every 0.5 s, reap after 2.5 s
T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function in a fresh event loop, as ralph runs (anyio on asyncio)."""
    return anyio.run(fn, backend="asyncio")


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """One statement on the test's database, in the queue's schema, committed."""
    with psycopg.connect(url, autocommit=True, options="-c search_path=ralph") as conn:
        cursor = conn.execute(statement.encode(), params or None)
        return cursor.fetchall() if cursor.description else []


def queue(url: str, **options: Any) -> FleetQueue:
    return FleetQueue(url, stall_timeout=STALL, deadline=3.0, connect_timeout=2.0, **options)


# --- peers: real processes ----------------------------------------------------------------


class Peer:
    """A peer process and what it printed; it starts work when told ``go``."""

    def __init__(self, role: str, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, role, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.said: list[dict[str, Any]] = []

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        """The peer's next line (fails after ``timeout`` seconds or if it exits)."""
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                pytest.fail(f"peer {self.pid} said nothing for {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"peer {self.pid} ended: {self.finish()}")
        self.said.append(json.loads(line))
        return self.said[-1]

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for the peer to end; all it printed is in ``said``; returns its stderr."""
        out, err = self.proc.communicate(timeout=timeout)
        self.said += [json.loads(line) for line in out.splitlines() if line.strip()]
        assert self.proc.returncode in (0, -signal.SIGKILL), err[-3000:]
        return err

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def go(*peers: Peer) -> None:
    """Start the peers together, once every one of them has loaded (on a busy machine a
    Python process may take seconds to start)."""
    for peer in peers:
        assert peer.next(timeout=60) == {"ready": True}
        peer.said.pop()
    for peer in peers:
        assert peer.proc.stdin is not None
        peer.proc.stdin.write("go\n")
        peer.proc.stdin.flush()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Peers started by the test, killed at its end whatever happened."""
    started: list[Peer] = []
    yield started
    for peer in started:
        if peer.proc.poll() is None:
            peer.kill()
        peer.proc.communicate()


def tasks(count: int, touches: Callable[[int], list[str]] = lambda i: []) -> list[dict[str, Any]]:
    return [
        {"task_id": f"t{i:02}", "digest": "d", "path": f"specs/t{i:02}.md", "touches": touches(i)}
        for i in range(count)
    ]


# --- schema ----------------------------------------------------------------------------------


def test_five_processes_create_the_schema_once(postgres_url: str, peers: list[Peer]) -> None:
    """Five processes opening an empty database at once: one creates the tables, none fails."""
    peers += [Peer("open", url=postgres_url) for _ in range(5)]
    go(*peers)
    for peer in peers:
        peer.finish()
    created = [said["created"] for peer in peers for said in peer.said]
    assert sorted(created) == [False] * 4 + [True]
    assert sql(postgres_url, "SELECT value FROM ralph_meta WHERE key = 'ralph_schema'") == [("1",)]


def test_open_upgrades_an_older_schema(postgres_url: str) -> None:
    """A database one procrastinate migration and one ralph step behind is brought up to date."""
    run(queue(postgres_url).open)
    sql(postgres_url, "DROP TABLE ralph_holders, ralph_tasks, ralph_spend, ralph_reaps")
    older = "03.04.00_01_pre_add_retry_failed_job_procedure.sql"
    sql(
        postgres_url,
        "UPDATE ralph_meta SET value = %s WHERE key = 'procrastinate_migration'",
        older,
    )
    sql(postgres_url, "UPDATE ralph_meta SET value = '0' WHERE key = 'ralph_schema'")

    assert run(queue(postgres_url).open) is False
    meta = dict(sql(postgres_url, "SELECT key, value FROM ralph_meta"))
    assert meta == {
        "procrastinate_migration": "03.04.00_50_post_add_retry_failed_job_procedure.sql",
        "ralph_schema": "1",
    }
    assert sql(postgres_url, "SELECT count(*) FROM ralph_tasks") == [(0,)]


@pytest.mark.parametrize(
    ("key", "value"),
    [("procrastinate_migration", "99.00.00_01_future.sql"), ("ralph_schema", "99")],
)
def test_a_schema_from_a_newer_ralph_is_refused(postgres_url: str, key: str, value: str) -> None:
    """A database upgraded by a newer ralph or procrastinate stops this one with exit code 2."""
    run(queue(postgres_url).open)
    sql(postgres_url, "UPDATE ralph_meta SET value = %s WHERE key = %s", value, key)
    with pytest.raises(QueueSetupError) as caught:
        run(queue(postgres_url).open)
    assert caught.value.exit_code == 2
    assert "newer" in str(caught.value)


# --- claiming across processes ---------------------------------------------------------------


def test_three_processes_claim_thirty_tasks_each_once(postgres_url: str, peers: list[Peer]) -> None:
    """Three processes offering and claiming the same 30 tasks: each task claimed exactly once."""
    run(queue(postgres_url).open)
    offered = tasks(30)
    peers += [Peer("drain", url=postgres_url, tasks=offered, slots=2, hold=0.05) for _ in range(3)]
    go(*peers)
    for peer in peers:
        peer.finish()
    claimed = [said["task"] for peer in peers for said in peer.said]
    assert sorted(claimed) == sorted(task["task_id"] for task in offered)
    assert all(peer.said for peer in peers), "every process got work"
    jobs = sql(postgres_url, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
    assert jobs == [("succeeded", 30)]
    latencies = sorted(said["latency"] for peer in peers for said in peer.said)
    print(
        f"\nclaim latency over {len(latencies)} claims: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )


def test_touches_overlap_is_respected_across_processes(
    postgres_url: str, peers: list[Peer]
) -> None:
    """Tasks whose touches overlap never run at the same time, whichever processes hold them."""
    groups = ["src/core/**", "src/core/api.py", "docs", "src/ui/*.ts"]
    offered = tasks(12, touches=lambda i: [groups[i % 4]])
    run(queue(postgres_url).open)
    peers += [Peer("drain", url=postgres_url, tasks=offered, slots=2, hold=0.15) for _ in range(3)]
    go(*peers)
    for peer in peers:
        peer.finish()
    runs = [said for peer in peers for said in peer.said]
    assert sorted(r["task"] for r in runs) == [t["task_id"] for t in offered]
    touches = {t["task_id"]: t["touches"] for t in offered}
    for a in runs:
        for b in runs:
            if a["task"] < b["task"] and overlap(touches[a["task"]], touches[b["task"]]):
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)
    assert len({r["pid"] for r in runs}) > 1
    # docs and src/ui don't overlap src/core: something ran beside something else
    assert any(
        a["start"] < b["end"] and b["start"] < a["end"] for a in runs for b in runs if a != b
    )


def test_claim_skips_excluded_touches_and_follows_priority(postgres_url: str) -> None:
    """A claim takes the lowest priority number first and leaves tasks touching excluded paths."""

    async def scenario() -> list[str | None]:
        async with queue(postgres_url) as q:
            await q.register(slots=3)
            await q.offer(
                [
                    Offer("late", "d", priority=200),
                    Offer("first", "d", priority=1, touches=("lib/x.py",)),
                    Offer("second", "d", priority=50, path="specs/a.md"),
                    Offer("third", "d", priority=50, path="specs/b.md"),
                ]
            )
            order = []
            for _ in range(5):
                claim = await q.claim(exclude_touches=["lib/**"])
                order.append(claim.task_id if claim else None)
            return order

    assert run(scenario) == ["second", "third", "late", None, None]


# --- a process dies ---------------------------------------------------------------------------


def test_a_sigkilled_holder_loses_its_task_within_stall_timeout(
    postgres_url: str, peers: list[Peer]
) -> None:
    """A holder SIGKILLed mid-task loses it within stall_timeout; another process takes it up;
    holders() shows the holder's host, pid and since while it lives."""

    async def offer() -> None:
        async with queue(postgres_url) as q:
            await q.offer([Offer("victim", "d", touches=("src/**",))])

    run(offer)
    holder = Peer("hold", url=postgres_url, stall=STALL)
    taker = Peer("take", url=postgres_url, stall=STALL)
    peers += [holder, taker]
    go(holder)
    assert holder.next()["claimed"] == "victim"
    go(taker)
    assert taker.next()["waiting"]

    async def who() -> list[Any]:
        async with queue(postgres_url) as q:
            return await q.holders()

    (held,) = run(who)
    assert (held.task_id, held.host, held.pid) == ("victim", socket.gethostname(), holder.pid)
    assert held.since is not None and time.time() - held.since.timestamp() < 20
    assert not held.stalled

    holder.kill()
    killed_at = time.time()
    took = taker.next(timeout=STALL + 10)
    takeover = took["at"] - killed_at
    print(f"\ntakeover after SIGKILL: {takeover:.2f} s (stall_timeout {STALL:g} s)")
    assert took["took"] == "victim"
    assert took["requeues"] == 1
    assert takeover <= STALL + 1.0  # the taker's poll and a loaded machine's scheduling
    taker.finish()
    assert sql(postgres_url, "SELECT task_id, pid FROM ralph_reaps") == [("victim", holder.pid)]


def test_a_reaped_holder_changes_nothing_late(postgres_url: str) -> None:
    """A holder declared dead can't release, count an attempt or claim; it is told so."""

    async def scenario() -> None:
        async with queue(postgres_url) as a, queue(postgres_url) as b:
            await a.register()
            await b.register()
            await a.offer([Offer("t1", "d")])
            claim_a = await a.claim()
            assert claim_a is not None
            sql(
                postgres_url,
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 minute'"
                " WHERE id = %s",
                claim_a.worker_id,
            )
            assert await b.reap() == ["t1"]
            claim_b = await b.claim()
            assert claim_b is not None and claim_b.job_id == claim_a.job_id

            for late in (a.release(claim_a, Outcome.DONE), a.record_attempt(claim_a)):
                with pytest.raises(ClaimLost):
                    await late
            with pytest.raises(DeclaredDead):
                await a.heartbeat()
            with pytest.raises(DeclaredDead):
                await a.claim()
            (held,) = await b.holders()
            assert (held.task_id, held.pid) == ("t1", os.getpid())
            await b.check(claim_b)
            assert await b.record_attempt(claim_b) == 1
            await b.release(claim_b, Outcome.DONE)
            assert await a.register() != claim_a.worker_id  # the way back: a new worker
            stats = await b.stats()
            assert (stats.jobs, stats.stalls, stats.retries) == ({"succeeded": 1}, 1, 1)

    run(scenario)


def test_concurrent_reapers_requeue_a_task_once(postgres_url: str) -> None:
    """Several processes reaping the same dead holder at once requeue its task exactly once."""

    async def scenario() -> None:
        async with queue(postgres_url) as dead:
            await dead.register()
            await dead.offer([Offer("t1", "d"), Offer("t2", "d")])
            await dead.claim()
            await dead.claim()
            sql(
                postgres_url,
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'",
            )
            reapers = [queue(postgres_url) for _ in range(4)]
            found: list[str] = []

            async def reap(q: FleetQueue) -> None:
                found.extend(await q.reap())

            for q in reapers:
                await q.open()
            async with anyio.create_task_group() as group:
                for q in reapers:
                    group.start_soon(reap, q)
            for q in reapers:
                await q.close()
            assert sorted(found) == ["t1", "t2"]
            stats = await dead.stats()
            assert (stats.jobs, stats.retries, stats.stalls) == ({"todo": 2}, 2, 2)

    run(scenario)


def test_a_release_under_way_wins_over_a_reap(postgres_url: str) -> None:
    """A holder declared stale while its release is being committed: the reap waits for the
    release, then leaves the finished task alone (no requeue, no stall counted)."""

    async def scenario() -> None:
        async with queue(postgres_url) as a, queue(postgres_url) as b:
            await a.register()
            await b.register()
            await a.offer([Offer("t1", "d")])
            claim = await a.claim()
            assert claim is not None
            sql(
                postgres_url,
                "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'"
                " WHERE id = %s",
                claim.worker_id,
            )
            finishing = anyio.Event()

            async def release_slowly() -> None:
                async with (
                    await psycopg.AsyncConnection.connect(
                        postgres_url, options="-c search_path=ralph"
                    ) as raw,
                    raw.transaction(),
                ):
                    await raw.execute(
                        "SELECT procrastinate_finish_job_v1(%s, 'succeeded', false)",
                        (claim.job_id,),
                    )
                    finishing.set()
                    await anyio.sleep(0.5)

            async with anyio.create_task_group() as group:
                group.start_soon(release_slowly)
                await finishing.wait()
                assert await b.reap() == []
            stats = await b.stats()
            assert (stats.jobs, stats.stalls, stats.peers) == ({"succeeded": 1}, 0, 1)

    run(scenario)


def test_a_claim_whose_answer_was_lost_is_given_back(postgres_url: str) -> None:
    """A job recorded under this process that none of its claims holds (a claim whose answer
    a deadline cut off) goes back to the queue at the next heartbeat."""

    async def scenario() -> None:
        async with queue(postgres_url) as q:
            worker = await q.register()
            await q.offer([Offer("t1", "d"), Offer("t2", "d")])
            held = await q.claim()
            assert held is not None
            sql(
                postgres_url,
                "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s"
                " WHERE status = 'todo'",
                worker,
            )
            await q.heartbeat()
            assert [h.task_id for h in await q.holders()] == [held.task_id]
            assert (await q.stats()).jobs == {"doing": 1, "todo": 1}

    run(scenario)


def test_after_an_outage_every_process_may_beat_before_anyone_reaps(postgres_url: str) -> None:
    """When PostgreSQL comes back, maintain() waits reap_after before reaping, so a peer whose
    heartbeat went stale only because of the outage keeps its tasks."""

    async def scenario() -> None:
        async with queue(postgres_url) as a, queue(postgres_url) as b:
            await a.register()
            await b.register()
            await b.offer([Offer("t1", "d")])
            claim = await b.claim()
            assert claim is not None
            sql(
                postgres_url,
                "UPDATE procrastinate_workers SET last_heartbeat = now() - '1 hour'::interval",
            )
            with anyio.move_on_after(1.5):
                async with anyio.create_task_group() as group:
                    group.start_soon(a.maintain)
                    await anyio.sleep(1.0)
                    await b.heartbeat()
            await b.check(claim)
            assert (await a.stats()).stalls == 0

    run(scenario)


# --- PostgreSQL unreachable -------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a black hole)."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_unreachable_server_raises_queue_unavailable_quickly(
    kind: str, silent_port: int, tmp_path: Path
) -> None:
    """open() on a server that refuses or never answers raises QueueUnavailable (exit 75) fast."""
    if kind == "refused":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    else:
        port = silent_port
    q = FleetQueue(f"postgresql://ralph@127.0.0.1:{port}/ralph", connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(QueueUnavailable) as caught:
        run(q.open)
    assert time.monotonic() - started < 2.0
    assert caught.value.exit_code == 75
    assert f"127.0.0.1:{port}/ralph" in str(caught.value)


def test_losing_the_server_mid_run_raises_and_recovers(postgres_url: str) -> None:
    """A silent or cut connection mid-run raises QueueUnavailable within the deadline; once
    the server is back, retrying() gets through and says how long it waited."""
    host_port = psycopg.conninfo.conninfo_to_dict(postgres_url)
    relay = Relay("127.0.0.1", int(host_port.get("port", 5432)))
    waits: list[float] = []

    async def regain_later(regain: Callable[[], None]) -> None:
        await anyio.sleep(1.0)
        regain()

    async def scenario() -> None:
        q = FleetQueue(relay.url(postgres_url), stall_timeout=STALL, deadline=1.0)
        async with q:
            await q.register()
            for lose, regain in ((relay.freeze, relay.thaw), (relay.cut, relay.restore)):
                lose()
                started = time.monotonic()
                with pytest.raises(QueueUnavailable):
                    await q.heartbeat()
                assert time.monotonic() - started < 2.0
                async with anyio.create_task_group() as group:
                    group.start_soon(regain_later, regain)
                    async for attempt in retrying(
                        on_wait=lambda _error, seconds, _tries: waits.append(seconds),
                        first_wait=0.2,
                        give_up_after=15,
                    ):
                        with attempt:
                            await q.heartbeat()
                assert q.lease_left() > 0

    try:
        run(scenario)
    finally:
        relay.close()
    assert len(waits) >= 2, "each outage was announced"
    assert sql(postgres_url, "SELECT count(*) FROM procrastinate_workers") == [(0,)]


def test_retrying_waits_only_on_queue_unavailable() -> None:
    """retrying() backs off on QueueUnavailable, announces each wait, then lets other errors
    through at once, and gives up with the last QueueUnavailable."""
    slept: list[float] = []
    told: list[int] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def scenario() -> None:
        tries = 0
        async for attempt in retrying(
            on_wait=lambda _e, _s, n: told.append(n), first_wait=1, max_wait=4, sleep=sleep
        ):
            with attempt:
                tries += 1
                if tries < 5:
                    raise QueueUnavailable("down")
        with pytest.raises(ValueError):
            async for attempt in retrying(sleep=sleep):
                with attempt:
                    raise ValueError("a bug, not an outage")
        with pytest.raises(QueueUnavailable):
            async for attempt in retrying(give_up_after=0, sleep=sleep):
                with attempt:
                    raise QueueUnavailable("still down")

    run(scenario)
    assert told == [1, 2, 3, 4]
    assert len(slept) == 4 and all(s <= 4 + 1 for s in slept) and slept[0] < slept[-1]


# --- offers and what the fleet remembers --------------------------------------------------------


def test_offer_keeps_one_live_job_per_task(postgres_url: str) -> None:
    """Offers racing for one task make one job; a changed spec refreshes a waiting job; a task
    held, done or failed with the same spec is not queued again; a changed spec or a retry is."""

    async def scenario() -> None:
        async with queue(postgres_url) as q:
            await q.register()
            results: list[list[str]] = []

            async def offer() -> None:
                results.append(await q.offer([Offer("t1", "d1")]))

            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(offer)
            assert sorted(results) == [[]] * 7 + [["t1"]]
            assert await q.offer([Offer("t1", "d2", priority=5)]) == ["t1"]
            claim = await q.claim()
            assert claim is not None and claim.digest == "d2"
            assert await q.offer([Offer("t1", "d3")]) == []
            assert await q.record_attempt(claim) == 1
            await q.release(claim, Outcome.FAILED, reason="checks failed")
            assert await q.offer([Offer("t1", "d2")]) == []
            assert await q.retry_task("t1")
            assert not await q.retry_task("unknown")
            assert await q.offer([Offer("t1", "d2")]) == ["t1"]
            claim = await q.claim()
            assert claim is not None
            await q.release(claim, Outcome.DONE)
            assert await q.offer([Offer("t1", "d2")]) == []
            assert await q.offer([Offer("t1", "d3")]) == ["t1"]
            claim = await q.claim()
            assert claim is not None
            await q.release(claim, Outcome.DROPPED)
            assert await q.offer([Offer("t1", "d3")]) == ["t1"]

    run(scenario)
    jobs = sql(postgres_url, "SELECT status::text FROM procrastinate_jobs ORDER BY id")
    assert jobs == [("failed",), ("succeeded",), ("aborted",), ("todo",)]


def test_attempts_failures_and_spend_are_kept_for_the_fleet(postgres_url: str) -> None:
    """Attempt numbers run on across processes, restart with a new spec; spend adds up by run."""

    async def scenario() -> None:
        async with queue(postgres_url) as a, queue(postgres_url) as b:
            await a.register(run_id="run-a")
            await b.register(run_id="run-b")
            await a.offer([Offer("t1", "d1")])
            claim = await a.claim()
            assert claim is not None
            assert await a.record_attempt(claim) == 1
            await a.add_spend(0.25, task_id="t1")
            await a.release(claim, Outcome.RETRY)
            claim = await b.claim()
            assert claim is not None and claim.requeues == 1
            assert await b.record_attempt(claim) == 2
            await b.add_spend(0.5, task_id="t1")
            await b.add_spend(1.0)
            await b.mark_failed("t1", "d1", "no progress")
            record = (await a.task_records())["t1"]
            assert (record.attempts, record.failed, record.reason) == (2, True, "no progress")
            assert record.spend_usd == pytest.approx(0.75)
            assert await a.total_spend() == pytest.approx(1.75)
            assert await a.total_spend(run_id="run-b") == pytest.approx(1.5)
            await b.release(claim, Outcome.DONE)
            await a.offer([Offer("t1", "d2")])
            claim = await a.claim()
            assert claim is not None
            assert await a.record_attempt(claim) == 1
            record = (await a.task_records())["t1"]
            assert (record.digest, record.failed, record.reason) == ("d2", False, "")

    run(scenario)


def test_close_gives_back_what_it_holds(postgres_url: str) -> None:
    """A process that closes gives its claims back at once and leaves the fleet."""

    async def scenario() -> None:
        async with queue(postgres_url) as a:
            await a.register()
            await a.offer([Offer("t1", "d")])
            assert await a.claim() is not None
        async with queue(postgres_url) as b:
            await b.register()
            assert [p.pid for p in await b.peers()] == [os.getpid()]
            claim = await b.claim()
            assert claim is not None and claim.task_id == "t1"

    run(scenario)


def test_only_the_fleet_imports_the_queue_libraries() -> None:
    """procrastinate, psycopg and its pool are imported by ralph.fleet alone."""
    ralph = Path(__file__).resolve().parent.parent / "ralph"
    importers = set()
    for path in ralph.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] in QUEUE_LIBRARIES for name in names):
                importers.add(path.relative_to(ralph).parts[0])
    assert importers == {"fleet"}


def test_nothing_imports_the_queue_unless_asked() -> None:
    """The CLI and the engine load without procrastinate or psycopg: the extra is optional."""
    code = (
        "import sys, ralph.cli, ralph.engine.loop; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('procrastinate', 'psycopg', 'psycopg_pool') or m.startswith('ralph.fleet')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the peer program ---------------------------------------------------------------------------


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _drain(q: FleetQueue, config: dict[str, Any]) -> None:
    """Offer every task, then claim and finish tasks on ``slots`` slots until none waits."""
    await q.offer(
        [Offer(**{**task, "touches": tuple(task["touches"])}) for task in config["tasks"]]
    )

    async def slot() -> None:
        while True:
            started = time.perf_counter()
            claim = await q.claim()
            latency = time.perf_counter() - started
            if claim is None:
                if not (await q.stats()).jobs.get("todo"):
                    return
                await anyio.sleep(0.05)
                continue
            start = time.time()
            await anyio.sleep(config["hold"])
            end = time.time()
            await q.release(claim, Outcome.DONE)
            _emit(task=claim.task_id, pid=os.getpid(), start=start, end=end, latency=latency)

    async with anyio.create_task_group() as group:
        for _ in range(config["slots"]):
            group.start_soon(slot)


async def _hold(q: FleetQueue) -> None:
    while (claim := await q.claim()) is None:
        await anyio.sleep(0.05)
    _emit(claimed=claim.task_id)
    await anyio.sleep_forever()


async def _take(q: FleetQueue) -> None:
    _emit(waiting=True)
    while (claim := await q.claim()) is None:
        await anyio.sleep(0.02)
    _emit(took=claim.task_id, at=time.time(), requeues=claim.requeues)
    await q.release(claim, Outcome.DONE)


async def _peer(role: str, config: dict[str, Any]) -> None:
    q = FleetQueue(config["url"], stall_timeout=config.get("stall", 60.0), deadline=5.0)
    _emit(ready=True)
    assert await anyio.to_thread.run_sync(sys.stdin.readline) == "go\n"
    created = await q.open()
    if role == "open":
        _emit(created=created)
        await q.close()
        return
    await q.register(slots=config.get("slots", 1))
    async with anyio.create_task_group() as group:
        group.start_soon(q.maintain)
        if role == "drain":
            await _drain(q, config)
        elif role == "hold":
            await _hold(q)
        else:
            await _take(q)
        group.cancel_scope.cancel()
    await q.close()


if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    anyio.run(_peer, sys.argv[1], json.loads(sys.argv[2]), backend="asyncio")
