"""``python -m bench``: every benchmark in turn, at sizes that finish in a few minutes.

``--full`` runs the sizes of docs/performance.md (2,000 tasks for memory, five latency
trials after a minute of idle, 10,000 specs); ``--only`` picks benchmarks. Each one also
runs alone: ``python -m bench.overhead --help`` and so on.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import (
    fleet,
    flood,
    idle,
    latency,
    memory,
    overhead,
    parallel,
    sandbox,
    scale,
    screen_corpus,
)

QUICK = {
    "overhead": ["--tasks", "100", "--repetitions", "3"],
    "memory": ["--tasks", "500", "--every", "100"],
    "flood": ["--bytes", str(1024**3)],
    "latency": ["--trials", "5", "--idle-seconds", "60"],
    "scale": ["--specs", "10000", "--repetitions", "3"],
    "idle": ["--minutes", "3", "--poll-interval", "5s"],
    "parallel": ["--tasks", "16", "--workers", "1", "2", "4", "--memory-tasks", "40"],
    "sandbox": ["--runs", "10"],
    "screen": [],
    "fleet": ["--tasks", "30"],
}
FULL = {
    **QUICK,
    "memory": ["--tasks", "2000", "--every", "250"],
    "idle": ["--minutes", "60", "--poll-interval", "30s"],
    "parallel": ["--tasks", "40", "--workers", "1", "2", "4", "8", "--memory-tasks", "200"],
    "sandbox": ["--runs", "30"],
    "fleet": ["--tasks", "60"],
}
MAINS = {
    "overhead": overhead.main,
    "memory": memory.main,
    "flood": flood.main,
    "latency": latency.main,
    "scale": scale.main,
    "idle": idle.main,
    "parallel": parallel.main,
    "sandbox": sandbox.main,
    "screen": screen_corpus.main,
    "fleet": fleet.main,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the sizes of docs/performance.md")
    parser.add_argument(
        "--only", nargs="+", choices=list(MAINS), default=list(MAINS), help="these benchmarks"
    )
    args = parser.parse_args(argv)
    sizes = FULL if args.full else QUICK
    broken = []
    for name in args.only:
        started = time.perf_counter()
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        try:
            MAINS[name](sizes[name])
        except SystemExit as exc:  # a benchmark that could not measure says why; go on
            if exc.code not in (None, 0):
                print(f"{name} could not finish: {exc.code}", flush=True)
                broken.append(name)
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    if broken:
        print(f"\nno figures from: {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
