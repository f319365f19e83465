"""Latency: the idle daemon, a new spec appears; how long until the agent starts.

``ralph run`` (the daemon, poll_interval 30s) waits on an empty backlog. First its idle
CPU is read from /proc/<pid>/stat over a minute; then, several times, a spec is moved
into specs/ (written aside, then renamed, as an editor saving atomically does) and the
time until the agent writes its first timestamp is measured. Between trials the daemon
finishes the task and goes idle again.

    python -m bench.latency --trials 5 --idle-seconds 60
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    EventTail,
    cpu_seconds,
    make_repo,
    median,
    print_machine,
    print_table,
    proc_status_kb,
    ralph_argv,
    ralph_env,
    scratch,
    spec_text,
)

TARGET_LATENCY_S = 1.0
TARGET_IDLE_CPU_PER_MIN = 0.1
SETTLE_S = 2.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="specs dropped in, one by one (5)")
    parser.add_argument(
        "--idle-seconds", type=float, default=60, help="how long idle CPU is read (60)"
    )
    parser.add_argument("--poll-interval", default="30s", help="the daemon's poll_interval (30s)")
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    args = parser.parse_args(argv)

    print_machine()
    print(
        f"latency: poll_interval {args.poll_interval}, {args.trials} trials, "
        f"idle CPU over {args.idle_seconds:g} s"
    )
    with scratch("latency", args.keep) as workdir:
        stamps = workdir / "stamps"
        stamps.mkdir()
        # The agent's first action is to write the wall-clock time it started.
        agent = (
            f'date +%s.%N > "{stamps}/$RALPH_TASK_ID"; '
            'cat > /dev/null; echo x > "out-$RALPH_TASK_ID.txt"'
        )
        root = make_repo(workdir / "repo", [], agent, poll_interval=f'"{args.poll_interval}"')
        stderr = workdir / "ralph.stderr"
        launched = time.monotonic()
        with stderr.open("wb") as sink:
            proc = subprocess.Popen(
                ralph_argv(root, "run"), env=ralph_env(), stdout=subprocess.DEVNULL, stderr=sink
            )
        try:
            idle = idle_cpu(proc, root, args.idle_seconds)
            latencies = [trial(proc, root, stamps, f"late{n}") for n in range(1, args.trials + 1)]
        except DaemonGone as exc:
            tail = stderr.read_text(errors="replace")[-3000:]
            alive = time.monotonic() - launched
            sys.exit(
                f"{exc}: the daemon exited ({proc.poll()}) {alive:.0f} s after it started\n{tail}"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    print_table(
        "time from the spec's rename into specs/ to the agent's first action",
        ["trial", "latency ms"],
        [[n + 1, 1000 * value] for n, value in enumerate(latencies)],
    )
    print(
        f"latency median {1000 * median(latencies):.0f} ms, max {1000 * max(latencies):.0f} ms "
        f"(target <= {1000 * TARGET_LATENCY_S:.0f} ms)"
    )
    print(
        f"idle: {idle.cpu:.3f} s CPU over {idle.seconds:.0f} s = "
        f"{idle.per_minute(idle.cpu):.3f} s per minute (target < {TARGET_IDLE_CPU_PER_MIN}); "
        f"with the git processes it ran: {idle.per_minute(idle.cpu_with_children):.3f} s per "
        f"minute; RSS {idle.rss_kb / 1024:.1f} MB"
    )
    return 0


@dataclass(frozen=True)
class Idle:
    """What the idle daemon used: CPU seconds (its own; with reaped children), over how long."""

    cpu: float
    cpu_with_children: float
    seconds: float
    rss_kb: int

    def per_minute(self, cpu: float) -> float:
        return cpu * 60 / self.seconds


class DaemonGone(Exception):
    """The daemon stopped (or never started) while the benchmark waited for it."""


def _wait(
    proc: subprocess.Popen[bytes], done: Callable[[], bool], seconds: float, what: str
) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if proc.poll() is not None:
            raise DaemonGone(f"waiting for {what}")
        if time.monotonic() > deadline:
            raise DaemonGone(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.002)


def idle_cpu(proc: subprocess.Popen[bytes], root: Path, seconds: float) -> Idle:
    """CPU seconds the idle daemon used over ``seconds``, after it settled; and its RSS."""
    events = EventTail(root)
    _wait(
        proc,
        lambda: any(event["event"] == "run_started" for event in events.new()),
        60,
        "the daemon's start",
    )
    pid = proc.pid
    time.sleep(SETTLE_S)
    before, started = cpu_seconds(pid), time.monotonic()
    before_all = cpu_seconds(pid, children=True)
    time.sleep(seconds)
    after, elapsed = cpu_seconds(pid), time.monotonic() - started
    after_all = cpu_seconds(pid, children=True)
    if before is None or after is None or before_all is None or after_all is None:
        raise DaemonGone("the daemon exited while idle")
    return Idle(after - before, after_all - before_all, elapsed, proc_status_kb(pid, "VmRSS") or 0)


def trial(proc: subprocess.Popen[bytes], root: Path, stamps: Path, task_id: str) -> float:
    """Seconds from the spec appearing to the agent's first action; waits for the commit."""
    events = EventTail(root)
    events.new()  # only what follows this spec
    aside = root / f".{task_id}.md.tmp"
    aside.write_text(spec_text(task_id), encoding="utf-8")
    appeared = time.time()
    os.rename(aside, root / "specs" / f"{task_id}.md")
    stamp = stamps / task_id
    _wait(proc, lambda: stamp.exists() and stamp.stat().st_size > 0, 90, f"the agent of {task_id}")
    started = float(stamp.read_text().strip())
    _wait(
        proc,
        lambda: any(event["event"] in ("task_done", "task_failed") for event in events.new()),
        90,
        f"the end of {task_id}",
    )
    time.sleep(SETTLE_S)  # back to idle, its watcher armed again
    return started - appeared


if __name__ == "__main__":
    sys.exit(main())
