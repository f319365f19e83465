"""Output flood: an agent that prints a gigabyte; ralph's peak RSS and its capture throughput.

The agent writes its one file, then prints SIZE bytes of text lines to stdout. ralph keeps
the first 8 MiB and the last 16 KiB in agent.log; the rest only streams through. The
throughput is output bytes over the agent's run time as ralph measured it; the same
producer into ``cat > /dev/null`` gives the pipe's own ceiling on this machine.

    python -m bench.flood --bytes 1073741824
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
)

GIB = 1024**3
LINE = "agent output line: the quick brown fox jumps over the lazy dog 0123456789"


def producer(size: int) -> str:
    """A shell line printing ``size`` bytes of text (yes is fast enough to saturate a pipe)."""
    return f"yes '{LINE}' | head -c {size}"


def bare_throughput(size: int) -> float:
    """MB/s of the producer into ``cat > /dev/null``: the pipe's ceiling."""
    started = time.perf_counter()
    subprocess.run(["sh", "-c", f"{producer(size)} | cat > /dev/null"], check=True)
    return size / (time.perf_counter() - started) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=GIB, help="bytes the agent prints (1 GiB)")
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    args = parser.parse_args(argv)

    print_machine()
    print(f"flood: the agent prints {args.bytes / GIB:.2f} GiB")
    agent = f'cat > /dev/null; echo x > "out-$RALPH_TASK_ID.txt"; {producer(args.bytes)}'
    with scratch("flood", args.keep) as workdir:
        root = make_repo(workdir / "repo", ["flood"], agent)
        figures = run(root)
        log_size = sum(p.stat().st_size for p in (root / ".ralph").rglob("agent.log"))
        committed = task_commits(root)
    ceiling = bare_throughput(args.bytes)
    seconds = figures["agent_s"]
    print_table(
        "ralph capturing the agent's output",
        ["figure", "value"],
        [
            ["output bytes ralph counted", int(figures["bytes"])],
            ["agent run time (s)", seconds],
            ["capture throughput (MB/s)", figures["bytes"] / seconds / 1e6],
            ["same producer into cat > /dev/null (MB/s)", ceiling],
            ["ralph RSS before the agent (MB)", figures["rss_before_kb"] / 1024],
            ["ralph peak RSS, VmHWM (MB)", figures["hwm_kb"] / 1024],
            ["agent.log on disk (MB)", log_size / 1e6],
            ["task committed", "yes" if committed == 1 else "no"],
        ],
    )
    return 0


def run(root: Path) -> dict[str, float]:
    """One ``ralph run --once``; the agent's duration and bytes from ralph's events."""
    proc = subprocess.Popen(
        ralph_argv(root, "run", "--once"),
        env=ralph_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = EventTail(root)
    figures = {"rss_before_kb": 0.0, "agent_s": 0.0, "bytes": 0.0}
    with RssSampler(proc.pid, interval=0.02) as sampler:
        while proc.poll() is None:
            for event in events.new():
                if event["event"] == "attempt_started":
                    figures["rss_before_kb"] = float(proc_status_kb(proc.pid, "VmRSS") or 0)
            time.sleep(0.02)
    for event in EventTail(root).new():
        if event["event"] == "agent_exited":
            figures["agent_s"] = float(event["duration_s"])  # type: ignore[arg-type]
            figures["bytes"] = float(event["output_bytes"])  # type: ignore[arg-type]
    figures["hwm_kb"] = float(sampler.hwm_kb)
    if proc.returncode != 0:
        sys.exit(f"ralph run --once exited {proc.returncode}")
    return figures


if __name__ == "__main__":
    sys.exit(main())
