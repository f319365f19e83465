"""Where ralph's time goes, from a ``py-spy record --threads --idle --format raw`` profile.

ralph's loop does one thing at a time: the event loop (main thread) either runs Python,
or waits in ``select`` for a child process or for the worker thread doing blocking git
work. So the time on ralph's critical path is the main thread's busy samples plus the
worker thread's busy samples; the rest is the children (agent, checks) themselves.

    python -m bench.profile_summary PROFILE.txt --rate 250 --tasks 100
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import print_table

_FRAME = re.compile(r"^(?P<func>.+) \((?P<file>[^:()]+):(?P<line>\d+)\)$")


@dataclass
class Summary:
    """Sample counts by thread state and by ralph function (inclusive, once per stack)."""

    main_busy: int = 0
    main_waiting: int = 0
    worker_busy: int = 0
    worker_idle: int = 0
    inclusive: Counter[str] = field(default_factory=Counter)
    innermost: Counter[str] = field(default_factory=Counter)
    libraries: Counter[str] = field(default_factory=Counter)


def summarize(path: Path) -> Summary:
    summary = Summary()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        if "waitpid" in thread:
            continue  # asyncio's child watcher threads only ever wait for a child
        leaf = frames[-1]
        is_worker = "worker thread" in thread
        if is_worker:
            if any(frame.startswith("Queue.get ") for frame in frames[-3:]):
                summary.worker_idle += count
                continue
            summary.worker_busy += count
        elif "Selector.select" in leaf and any("_run_once" in frame for frame in frames[-3:]):
            summary.main_waiting += count
            continue
        else:
            summary.main_busy += count
        _attribute(summary, frames, count)
    return summary


def _attribute(summary: Summary, frames: list[str], count: int) -> None:
    seen: set[str] = set()
    innermost = ""
    for frame in frames:
        match = _FRAME.match(frame)
        if match is None:
            continue
        file = match["file"]
        if file.startswith("ralph/"):
            name = f"{file.removesuffix('.py').replace('/', '.')}.{match['func']}"
            if name not in seen:
                seen.add(name)
                summary.inclusive[name] += count
            innermost = name
    summary.innermost[innermost or "(outside ralph's code)"] += count
    leaf = _FRAME.match(frames[-1])
    if leaf is not None:
        top = leaf["file"].split("/")[0].removesuffix(".py")
        summary.libraries[top] += count


def report(path: Path, rate: float, tasks: int, limit: int = 25) -> None:
    """Print where ralph's own time goes, in ms per task."""
    summary = summarize(path)

    def ms(samples: int) -> float:
        return 1000 * samples / rate / tasks

    print_table(
        f"threads (py-spy, {rate:g} Hz, ms per task over {tasks} tasks)",
        ["thread", "state", "ms/task"],
        [
            ["main (event loop)", "running Python", ms(summary.main_busy)],
            ["main (event loop)", "waiting (children, worker)", ms(summary.main_waiting)],
            ["worker (to_thread)", "busy (git, files)", ms(summary.worker_busy)],
        ],
    )
    print_table(
        "ralph functions, inclusive (busy samples of both threads)",
        ["function", "ms/task"],
        [[name, ms(count)] for name, count in summary.inclusive.most_common(limit)],
    )
    print_table(
        "innermost ralph function (self time, callees outside ralph included)",
        ["function", "ms/task"],
        [[name, ms(count)] for name, count in summary.innermost.most_common(limit)],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--rate", type=float, default=250, help="py-spy's --rate (250)")
    parser.add_argument("--tasks", type=int, default=1, help="tasks in the profiled run")
    parser.add_argument("--limit", type=int, default=25, help="rows per table (25)")
    args = parser.parse_args(argv)
    report(args.profile, args.rate, args.tasks, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
