"""Many machines on one machine: 3 ralph processes x 2 workers sharing a backlog through
PostgreSQL against one process with 6 workers and no queue, and the queue's claim latency.

Each process has its own clone of a bare remote; the agent sleeps (as a real agent waits on
its model) and writes one file of its own; ``checks = ["true"]``. The fleet lands by fetch,
rebase, re-check and push; the single process lands on its local branch. The claim latency
is each ``ralph.task_claimed`` log line's ``claim_ms`` (one claim: offer, lock, pick).

    python -m bench.fleet --tasks 60 --sleep 2 --url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import (
    git,
    make_repo,
    print_machine,
    print_table,
    ralph_argv,
    ralph_env,
    scratch,
    task_ids,
    toml_string,
)

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60, help="specs (60)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds the agent waits (2)")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help="a PostgreSQL role that may CREATE DATABASE"
    )
    parser.add_argument("--keep", action="store_true", help="keep the repositories")
    args = parser.parse_args(argv)
    try:
        import psycopg
    except ImportError:
        sys.exit("needs the queue extra: pip install 'ralphd[queue]'")
    try:
        psycopg.connect(args.url, connect_timeout=3).close()
    except psycopg.Error as exc:
        sys.exit(f"no PostgreSQL at {args.url}: {exc}")
    print_machine()
    agent = f'cat > /dev/null; sleep {args.sleep}; echo x > "out-$RALPH_TASK_ID.txt"'
    with scratch("fleet", args.keep) as workdir:
        single = make_repo(workdir / "single", task_ids(args.tasks), agent, workers="6")
        started = time.monotonic()
        _wait(
            [
                subprocess.Popen(
                    ralph_argv(single, "run", "--once"),
                    env=ralph_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            ]
        )
        one = time.monotonic() - started  # fmt: skip
        done_one = _tasks_on(single, "main")
        database = f"ralph_bench_{uuid.uuid4().hex[:8]}"
        _admin(args.url, f"CREATE DATABASE {database}")
        try:
            url = psycopg.conninfo.make_conninfo(args.url, dbname=database)
            clones = _fleet(workdir, args.tasks, agent, url)
            started = time.monotonic()
            procs = [
                subprocess.Popen(ralph_argv(clone, "run", "--once"), env=ralph_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for clone in clones
            ]  # fmt: skip
            logs = _wait(procs)
            three = time.monotonic() - started
            done_three = _tasks_on(workdir / "remote.git", "main")
        finally:
            if args.keep:
                print(f"(keeping database {database})", file=sys.stderr)
            else:
                _admin(args.url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    print_table(
        f"{args.tasks} tasks, agent sleeps {args.sleep:g} s, checks = [\"true\"]",
        ["setup", "done once", "seconds", "tasks/hour", "vs single"],
        [
            ["1 process x 6 workers, no queue", done_one, round(one, 1),
             round(3600 * done_one / one), "1.00x"],
            ["3 processes x 2 workers, queue", done_three, round(three, 1),
             round(3600 * done_three / three), f"{one / three:.2f}x"],
        ],
    )  # fmt: skip
    claims = [
        float(str(event["claim_ms"]))
        for text in logs
        for event in _json_lines(text)
        if event.get("event") == "ralph.task_claimed"
    ]
    if claims:
        print_table(
            "claim latency (ms), 3 processes x 2 workers claiming",
            ["claims", "median", "p90", "max"],
            [[len(claims), round(statistics.median(claims), 1),
              round(sorted(claims)[int(0.9 * (len(claims) - 1))], 1), round(max(claims), 1)]],
        )  # fmt: skip
    return 0


def _fleet(workdir: Path, tasks: int, agent: str, url: str) -> list[Path]:
    seed = make_repo(
        workdir / "seed", task_ids(tasks), agent, workers="2", queue=toml_string(url),
        stall_timeout='"30s"',
    )  # fmt: skip
    remote = workdir / "remote.git"
    git(workdir, "init", "-q", "--bare", "-b", "main", str(remote))
    git(seed, "push", "-q", str(remote), "main")
    clones = []
    for name in ("a", "b", "c"):
        clone = workdir / name
        git(workdir, "clone", "-q", str(remote), str(clone))
        git(clone, "config", "user.name", name)
        git(clone, "config", "user.email", f"{name}@example.invalid")
        clones.append(clone)
    return clones


def _wait(procs: list[subprocess.Popen[str]]) -> list[str]:
    logs = []
    for proc in procs:
        _out, err = proc.communicate(timeout=3600)
        if proc.returncode not in (0, 1):
            sys.exit(f"ralph run --once exited {proc.returncode}: {err[-2000:]}")
        logs.append(err)
    return logs


def _tasks_on(repository: Path, branch: str) -> int:
    out = git(repository, "log", branch, "--format=%(trailers:key=Ralph-Task,valueonly)")
    ids = [line.strip() for line in out.splitlines() if line.strip()]
    if len(ids) != len(set(ids)):
        sys.exit(f"a task was committed twice in {repository}")
    return len(ids)


def _json_lines(text: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _admin(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement.encode())


if __name__ == "__main__":
    sys.exit(main())
