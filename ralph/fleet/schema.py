"""The queue's tables: procrastinate's schema plus ralph's own, created or upgraded once.

Everything lives in one PostgreSQL schema (``ralph`` by default), so the database may also
hold another application's procrastinate without either seeing the other's workers.
Several processes may start at once: a session advisory lock lets one of them create or
upgrade while the others wait, then find the work done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, LiteralString

from procrastinate.schema import SchemaManager
from psycopg import AsyncConnection, sql

from ralph.fleet.errors import QueueSetupError

SCHEMA_LOCK = (0x72616C70, 1)  # ("ralp", 1): advisory lock keys are ralph's own
MIGRATION_KEY = "procrastinate_migration"
RALPH_KEY = "ralph_schema"

# ralph's own tables, one step per schema version; a shipped step is never edited, a change
# is a new step. procrastinate_workers holds each process's heartbeat, ralph_holders who it is.
RALPH_STEPS: tuple[LiteralString, ...] = (
    """
    CREATE TABLE ralph_holders (
        worker_id bigint PRIMARY KEY REFERENCES procrastinate_workers(id) ON DELETE CASCADE,
        host text NOT NULL,
        pid integer NOT NULL,
        slots integer NOT NULL,
        run_id text NOT NULL,
        since timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE ralph_tasks (
        task_id text PRIMARY KEY,
        digest text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        ended text NOT NULL DEFAULT '' CHECK (ended IN ('', 'done', 'failed')),
        reason text NOT NULL DEFAULT '',
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE ralph_spend (
        id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
        at timestamptz NOT NULL DEFAULT now(),
        run_id text NOT NULL,
        host text NOT NULL,
        task_id text,
        usd double precision NOT NULL CHECK (usd >= 0)
    );
    CREATE INDEX ralph_spend_task_idx ON ralph_spend (task_id);
    CREATE TABLE ralph_reaps (
        id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
        at timestamptz NOT NULL DEFAULT now(),
        job_id bigint NOT NULL,
        task_id text NOT NULL,
        worker_id bigint,
        host text,
        pid integer
    );
    """,
)

_META = "CREATE TABLE ralph_meta (key text PRIMARY KEY, value text NOT NULL)"


def shipped_migrations() -> list[str]:
    """procrastinate's migration files in order (zero-padded names sort as strings)."""
    folder = Path(SchemaManager.get_migrations_path())
    return sorted(path.name for path in folder.glob("*.sql"))


async def ensure_schema(conn: AsyncConnection[Any], schema: str) -> bool:
    """Create the queue's tables, or bring them up to date; True when this call created them.

    ``conn`` is a dedicated autocommit connection: the session lock it takes is released
    when it closes, whatever happens to this process.
    """
    await conn.execute("SELECT pg_advisory_lock(%s, %s)", SCHEMA_LOCK)
    try:
        await _use_schema(conn, schema)
        if await _create(conn, schema):
            return True
        await _upgrade(conn)
        return False
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", SCHEMA_LOCK)


async def _use_schema(conn: AsyncConnection[Any], schema: str) -> None:
    found = await (await conn.execute("SELECT to_regnamespace(%s)", (schema,))).fetchone()
    if found is None or found[0] is None:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))


async def _create(conn: AsyncConnection[Any], schema: str) -> bool:
    """procrastinate's schema, ralph's tables and the versions, in one transaction."""
    async with conn.transaction():
        found = await (
            await conn.execute("SELECT to_regclass(%s)", (f'"{schema}".procrastinate_jobs',))
        ).fetchone()
        if found is not None and found[0] is not None:
            return False
        await conn.execute(SchemaManager.get_schema())  # no parameters: several statements
        for step in RALPH_STEPS:
            await conn.execute(step)
        await conn.execute(_META)
        await conn.execute(
            "INSERT INTO ralph_meta (key, value) VALUES (%s, %s), (%s, %s)",
            (MIGRATION_KEY, shipped_migrations()[-1], RALPH_KEY, str(len(RALPH_STEPS))),
        )
        return True


async def _upgrade(conn: AsyncConnection[Any]) -> None:
    """Apply the procrastinate migrations and ralph steps newer than the database's."""
    rows = await (await conn.execute("SELECT key, value FROM ralph_meta")).fetchall()
    meta = {str(key): str(value) for key, value in rows}
    if MIGRATION_KEY not in meta or RALPH_KEY not in meta:
        raise QueueSetupError(
            "queue: the database has procrastinate tables that ralph did not create "
            "(no ralph_meta); use a database or schema of ralph's own"
        )
    migrations = shipped_migrations()
    applied = meta[MIGRATION_KEY]
    if applied not in migrations:
        raise QueueSetupError(
            f"queue: the database was upgraded by a newer procrastinate ({applied}); "
            "upgrade ralph on this host"
        )
    ralph_version = int(meta[RALPH_KEY])
    if ralph_version > len(RALPH_STEPS):
        raise QueueSetupError(
            f"queue: the database was upgraded by a newer ralph (schema {ralph_version}, "
            f"this ralph knows {len(RALPH_STEPS)}); upgrade ralph on this host"
        )
    folder = Path(SchemaManager.get_migrations_path())
    for name in migrations[migrations.index(applied) + 1 :]:
        async with conn.transaction():
            await conn.execute(folder.joinpath(name).read_bytes())
            await _record(conn, MIGRATION_KEY, name)
    for version in range(ralph_version, len(RALPH_STEPS)):
        async with conn.transaction():
            await conn.execute(RALPH_STEPS[version])
            await _record(conn, RALPH_KEY, str(version + 1))


async def _record(conn: AsyncConnection[Any], key: str, value: str) -> None:
    await conn.execute("UPDATE ralph_meta SET value = %s WHERE key = %s", (value, key))
