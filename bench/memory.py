"""Memory over a long run: ralph's resident set while it works through many trivial tasks.

One ``ralph run --once`` over N specs (the trivial agent, ``true`` as check). The RSS of
the ralph process is read from /proc/<pid>/status at the start (first task started), every
K tasks and at the end; VmHWM gives the peak. The table also shows the time per task in
each stretch, which shows whether ralph slows down as the backlog and history grow.

    python -m bench.memory --tasks 2000 --every 250
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    EventTail,
    RssSampler,
    make_repo,
    print_machine,
    print_table,
    proc_status_kb,
    ralph_argv,
    ralph_env,
    scratch,
    task_commits,
    task_ids,
)

TARGET_GROWTH_MB = 5
TARGET_PEAK_MB = 80


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks in the run (2000)")
    parser.add_argument("--every", type=int, default=250, help="print RSS every K tasks (250)")
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    args = parser.parse_args(argv)

    print_machine()
    print(f"memory: {args.tasks} tasks, RSS every {args.every}")
    with scratch("memory", args.keep) as workdir:
        root = make_repo(workdir / "repo", task_ids(args.tasks))
        rows, hwm_kb, total = watch_run(root, args.tasks, args.every)
        done = task_commits(root)
    print_table(
        "ralph's RSS during the run (VmRSS of the ralph process)",
        ["tasks done", "elapsed s", "RSS MB", "growth MB", "ms/task since last row"],
        rows,
    )
    start_mb, end_mb = float(str(rows[0][2])), float(str(rows[-1][2]))
    print(
        f"{done} of {args.tasks} tasks committed in {total:.0f} s; "
        f"growth {end_mb - start_mb:+.1f} MB (target <= {TARGET_GROWTH_MB}), "
        f"peak (VmHWM) {hwm_kb / 1024:.1f} MB (target <= {TARGET_PEAK_MB})"
    )
    return 0


def watch_run(root: Path, tasks: int, every: int) -> tuple[list[list[object]], int, float]:
    """Run ralph over the backlog; rows of (tasks done, elapsed, RSS, growth, ms/task)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ralph_argv(root, "run", "--once"),
        env=ralph_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = EventTail(root)
    rows: list[list[object]] = []
    done = 0
    first_kb = 0
    last_mark = (0, 0.0)
    with RssSampler(proc.pid, interval=0.1) as sampler:
        while proc.poll() is None:
            for event in events.new():
                name = event["event"]
                now = time.perf_counter() - started
                if name == "task_started" and not rows:
                    first_kb = proc_status_kb(proc.pid, "VmRSS") or 0
                    rows.append(["start", round(now, 1), first_kb / 1024, 0.0, ""])
                    last_mark = (0, now)
                elif name == "task_done":
                    done += 1
                    if done % every == 0 and done < tasks:
                        last_mark = _row(
                            rows,
                            pid=proc.pid,
                            done=done,
                            now=now,
                            first_kb=first_kb,
                            last_mark=last_mark,
                        )
            time.sleep(0.05)
        total = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"ralph run --once exited {proc.returncode}")
    for event in events.new():
        if event["event"] == "task_done":
            done += 1
    end_kb = sampler.samples[-1][1] if sampler.samples else 0
    per_task = 1000 * (total - last_mark[1]) / max(done - last_mark[0], 1)
    rows.append(
        [f"end ({done})", round(total, 1), end_kb / 1024, (end_kb - first_kb) / 1024, per_task]
    )
    return rows, sampler.hwm_kb, total


def _row(
    rows: list[list[object]],
    *,
    pid: int,
    done: int,
    now: float,
    first_kb: int,
    last_mark: tuple[int, float],
) -> tuple[int, float]:
    rss = proc_status_kb(pid, "VmRSS") or 0
    per_task = 1000 * (now - last_mark[1]) / max(done - last_mark[0], 1)
    rows.append([done, round(now, 1), rss / 1024, (rss - first_kb) / 1024, per_task])
    print(f"  {done} tasks, {now:.0f} s, RSS {rss / 1024:.1f} MB", file=sys.stderr, flush=True)
    return done, now


if __name__ == "__main__":
    sys.exit(main())
