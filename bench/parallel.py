"""Parallel workers: throughput with 1, 2, 4, 8 agents at once, the merge queue's worst case,
and the supervisor's memory with many workers.

The agent sleeps (as a real agent waits on its model) and writes one file of its own, so
on a 2-core machine the agents don't compete for the CPU; ``checks = ["true"]``.

- throughput: ``--tasks`` specs, workers 1, 2, 4 and 8: tasks per hour and the speed-up;
- shared file: every task appends to one file, the worst case for the queue: conflicts,
  re-checks, throughput, and that every task still landed once;
- memory: 8 workers over ``--memory-tasks`` tasks with an instant agent: RSS over time.

    python -m bench.parallel --tasks 40 --sleep 2 --memory-tasks 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    RssSampler,
    make_repo,
    print_machine,
    print_table,
    ralph_argv,
    ralph_env,
    scratch,
    task_commits,
    task_ids,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=40, help="specs per throughput run (40)")
    parser.add_argument("--sleep", type=float, default=2.0, help="seconds the agent waits (2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--memory-tasks", type=int, default=200, help="tasks of the memory run")
    parser.add_argument("--keep", action="store_true", help="keep the repositories")
    args = parser.parse_args(argv)
    print_machine()
    with scratch("parallel", args.keep) as workdir:
        throughput(workdir, args.tasks, args.sleep, args.workers)
        shared_file(workdir, args.tasks, args.sleep, max(args.workers))
        memory(workdir, args.memory_tasks, max(args.workers))
    return 0


def _run(root: Path) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run(
        ralph_argv(root, "run", "--once"), env=ralph_env(), capture_output=True, check=False
    )
    if done.returncode not in (0, 1):
        sys.exit(f"ralph run --once exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return time.monotonic() - started, done.returncode


def _events(root: Path) -> list[dict[str, object]]:
    path = root / ".ralph" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def throughput(workdir: Path, tasks: int, sleep: float, counts: list[int]) -> None:
    agent = f'cat > /dev/null; sleep {sleep}; echo x > "out-$RALPH_TASK_ID.txt"'
    rows = []
    base = None
    for workers in counts:
        root = make_repo(
            workdir / f"throughput-{workers}", task_ids(tasks), agent, workers=str(workers)
        )
        seconds, _code = _run(root)
        per_hour = 3600 * task_commits(root) / seconds
        base = base or per_hour
        rows.append(
            [
                workers,
                task_commits(root),
                round(seconds, 1),
                round(per_hour),
                f"{per_hour / base:.2f}x",
            ]
        )
    print_table(
        f'throughput: {tasks} tasks, agent sleeps {sleep:g} s, checks = ["true"]',
        ["workers", "committed", "seconds", "tasks/hour", "vs 1 worker"],
        rows,
    )


def shared_file(workdir: Path, tasks: int, sleep: float, workers: int) -> None:
    agent = f'cat > /dev/null; sleep {sleep}; echo "$RALPH_TASK_ID" >> shared.txt'
    rows = []
    for count in (1, workers):
        root = make_repo(workdir / f"shared-{count}", task_ids(tasks), agent, workers=str(count))
        (root / "shared.txt").write_text("")
        subprocess.run(["git", "add", "shared.txt"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", "shared"], cwd=root, check=True)
        seconds, _code = _run(root)
        events = _events(root)
        conflicts = sum(
            1 for e in events if e.get("event") == "rolled_back" and e.get("reason") == "conflict"
        )
        rechecks = sum(1 for e in events if e.get("event") == "rechecked")
        lines = (root / "shared.txt").read_text().split()
        rows.append(
            [
                count,
                task_commits(root),
                len(lines),
                len(set(lines)),
                conflicts,
                rechecks,
                round(seconds, 1),
                round(3600 * task_commits(root) / seconds),
            ]
        )
    print_table(
        f"shared file: every task appends to shared.txt ({tasks} tasks)",
        [
            "workers",
            "committed",
            "lines",
            "distinct",
            "conflicts",
            "re-checks",
            "seconds",
            "tasks/hour",
        ],
        rows,
    )


def memory(workdir: Path, tasks: int, workers: int) -> None:
    agent = 'cat > /dev/null; echo x > "out-$RALPH_TASK_ID.txt"'
    root = make_repo(workdir / "memory", task_ids(tasks), agent, workers=str(workers))
    proc = subprocess.Popen(
        ralph_argv(root, "run", "--once"),
        env=ralph_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with RssSampler(proc.pid, interval=0.5) as sampler:
        proc.wait()
    samples = sampler.samples
    marks = [samples[int(i * (len(samples) - 1) / 4)] for i in range(5)] if samples else []
    print_table(
        f"memory: {workers} workers, {tasks} tasks, instant agent",
        ["seconds", "RSS MB"],
        [[round(t, 1), round(kb / 1024, 1)] for t, kb in marks],
    )
    peak, hwm = sampler.peak_kb / 1024, sampler.hwm_kb / 1024
    print(f"peak RSS {peak:.1f} MB, VmHWM {hwm:.1f} MB, committed {task_commits(root)}")


if __name__ == "__main__":
    sys.exit(main())
