"""Idle soak: a daemon with nothing to do, left alone for a long time.

``ralph run`` waits on an empty backlog for ``--minutes``. Meanwhile this counts its
wake-ups (each idle wait starts with a ``STATUS=idle`` notify message, received on a
datagram socket standing in for systemd), its CPU time and its memory. At the end a spec
is dropped in: the daemon must still be there, do the task, and stop with exit 0 only
when SIGTERM asks it to.

    python -m bench.idle --minutes 60 --poll-interval 30s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    cpu_seconds,
    make_repo,
    print_machine,
    print_table,
    proc_status_kb,
    ralph_argv,
    ralph_env,
    scratch,
    spec_text,
    task_commits,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5, help="how long it stays idle (5)")
    parser.add_argument("--poll-interval", default="30s", help="the daemon's poll_interval (30s)")
    parser.add_argument("--keep", action="store_true", help="keep the repository")
    args = parser.parse_args(argv)

    print_machine()
    print(f"idle soak: {args.minutes:g} min idle, poll_interval {args.poll_interval}")
    with scratch("idle", args.keep) as workdir:
        root = make_repo(workdir / "repo", [], poll_interval=f'"{args.poll_interval}"')
        address = str(workdir / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(address)
        listener.settimeout(0.5)
        env = {**ralph_env(), "NOTIFY_SOCKET": address}
        with (workdir / "ralph.stderr").open("wb") as sink:
            proc = subprocess.Popen(
                ralph_argv(root, "run"), env=env, stdout=subprocess.DEVNULL, stderr=sink
            )
        try:
            rows = soak(proc, listener, args.minutes * 60)
            alive = proc.poll() is None
            picked_up = alive and drop_spec(root, proc)
            code = stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            listener.close()
        print_table(
            "idle daemon, per interval",
            ["minute", "wake-ups", "CPU s", "RSS MB", "alive"],
            rows,
        )
        reasons = run_finished_reasons(root)
        print(
            f"\nalive after {args.minutes:g} min: {'yes' if alive else 'NO'}; "
            f"new spec done: {'yes' if picked_up else 'no'}; exit code on SIGTERM: {code}; "
            f"run_finished reason: {', '.join(reasons) or 'none'}"
        )
    return 0 if alive and picked_up and code == 0 else 1


def soak(
    proc: subprocess.Popen[bytes], listener: socket.socket, seconds: float
) -> list[list[object]]:
    """One row per minute (or part): wake-ups, CPU seconds used, RSS, whether still running."""
    rows: list[list[object]] = []
    started = time.monotonic()
    minute_end = started + 60
    wakeups = 0
    cpu_before = cpu_seconds(proc.pid) or 0.0
    while True:
        now = time.monotonic()
        if now >= minute_end or now - started >= seconds or proc.poll() is not None:
            cpu_now = cpu_seconds(proc.pid) if proc.poll() is None else None
            rss = proc_status_kb(proc.pid, "VmRSS") if proc.poll() is None else None
            rows.append(
                [
                    len(rows) + 1,
                    wakeups,
                    round((cpu_now or cpu_before) - cpu_before, 3),
                    round(rss / 1024, 1) if rss else "-",
                    "yes" if proc.poll() is None else f"NO (exit {proc.returncode})",
                ]
            )
            cpu_before, wakeups, minute_end = cpu_now or cpu_before, 0, now + 60
            if now - started >= seconds or proc.poll() is not None:
                return rows
        try:
            message = listener.recv(4096).decode(errors="replace")
        except TimeoutError:
            continue
        if "STATUS=idle" in message:
            wakeups += 1


def drop_spec(root: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Move a spec into specs/ and wait for its commit."""
    aside = root / "late.tmp"
    aside.write_text(spec_text("late"), encoding="utf-8")
    os.replace(aside, root / "specs" / "late.md")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if task_commits(root) >= 1:
            return True
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        return None


def run_finished_reasons(root: Path) -> list[str]:
    path = root / ".ralph" / "events.jsonl"
    reasons = []
    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("event") == "run_finished":
            reasons.append(str(event.get("reason")))
    return reasons


if __name__ == "__main__":
    sys.exit(main())
