"""Scale: 10,000 specs; the time of ``ralph status`` and of picking the next task.

Half the specs have YAML front matter (priority, some a dependency on an earlier task),
half are plain Markdown. Two histories: no task done yet, and half of them done (one
commit with a ``Ralph-Task`` trailer each, written with git fast-import). ``ralph status``
is timed as a process (wall clock, start-up included); picking the next task is timed in
this process, step by step, as the loop's scan does it: read the specs, read the done
tasks from git, read state.json, plan, choose.

    python -m bench.scale --specs 10000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.common import (
    git,
    make_repo,
    median,
    print_machine,
    print_table,
    ralph_argv,
    ralph_env,
    scratch,
    task_ids,
)

TARGET_S = 1.0
T = TypeVar("T")


def spec_text(index: int, task_id: str, previous: str | None) -> str:
    body = f"# Task {task_id}\n\nChange the module for {task_id} and add a test for it.\n"
    if index % 2:
        return body
    depends = f"depends_on: {previous}\n" if previous and index % 10 == 0 else ""
    return f"---\npriority: {index % 7 * 10}\n{depends}---\n{body}"


def build(root: Path, count: int, done: int) -> Path:
    """A repository with ``count`` committed specs and ``done`` task commits on top."""
    ids = task_ids(count)
    make_repo(root, [])
    previous = None
    for index, task_id in enumerate(ids):
        (root / "specs" / f"{task_id}.md").write_text(spec_text(index, task_id, previous))
        previous = task_id
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", f"{count} specs")
    if done:
        _commit_done(root, ids[:done])
    return root


def _commit_done(root: Path, ids: list[str]) -> None:
    """One empty commit per task with its trailer, as ralph would leave them (fast-import)."""
    head = git(root, "rev-parse", "HEAD").strip()
    chunks = []
    for number, task_id in enumerate(ids):
        message = f"Task {task_id}\n\nRalph-Task: {task_id}\nRalph-Attempt: 1\n".encode()
        chunks.append(
            b"commit refs/heads/main\n"
            + f"committer Bench <bench@example.invalid> {1_700_000_000 + number} +0000\n".encode()
            + f"data {len(message)}\n".encode()
            + message
            + (f"from {head}\n".encode() if number == 0 else b"")
            + b"\n"
        )
    git(root, "fast-import", "--quiet", stdin=b"".join(chunks))
    git(root, "reset", "-q", "--hard", "main")


def timed(func: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    value = func()
    return time.perf_counter() - started, value


def pick_steps(root: Path) -> dict[str, float]:
    """Seconds of each step of the loop's scan and choice, in this process."""
    from ralph.backlog.specs import load_specs
    from ralph.backlog.state import StateStore
    from ralph.backlog.tasks import next_task, plan
    from ralph.vcs import repo

    seconds: dict[str, float] = {}
    seconds["read specs (load_specs)"], spec_set = timed(
        lambda: load_specs(root / "specs", "specs/")
    )
    seconds["done tasks from git (done_tasks)"], done = timed(lambda: repo.done_tasks(root))
    digests = {spec.id: spec.digest for spec in spec_set.specs}
    state = StateStore(root / repo.STATE_DIR)
    seconds["state.json (records)"], records = timed(lambda: state.records(digests))
    seconds["plan"], tasks = timed(lambda: plan(spec_set, done, records))
    seconds["next_task"], _task = timed(lambda: next_task(tasks))
    seconds["total"] = sum(seconds.values())
    return seconds


def status_seconds(root: Path, repetitions: int) -> float:
    """Median wall time of ``ralph status`` (a new process each time)."""
    times = []
    for _ in range(repetitions):
        started = time.perf_counter()
        subprocess.run(
            ralph_argv(root, "status"), env=ralph_env(), check=True, stdout=subprocess.DEVNULL
        )
        times.append(time.perf_counter() - started)
    return median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--specs", type=int, default=10_000, help="specs (10000)")
    parser.add_argument("--repetitions", type=int, default=3, help="timings per figure (3)")
    parser.add_argument("--keep", action="store_true", help="keep the repositories")
    args = parser.parse_args(argv)

    print_machine()
    print(f"scale: {args.specs} specs, {args.repetitions} repetitions (medians)")
    rows = []
    steps_rows: dict[str, list[float]] = {}
    with scratch("scale", args.keep) as workdir:
        empty = make_repo(workdir / "empty", [])
        floor = status_seconds(empty, args.repetitions)
        for label, done in [("none done", 0), ("half done", args.specs // 2)]:
            root = build(workdir / label.replace(" ", "-"), args.specs, done)
            status = status_seconds(root, args.repetitions)
            runs = [pick_steps(root) for _ in range(args.repetitions)]
            for step in runs[0]:
                steps_rows.setdefault(step, []).append(median([run[step] for run in runs]))
            rows.append([label, done, status, median([run["total"] for run in runs])])
    print_table(
        f"{args.specs} specs (ralph status on an empty backlog takes {floor:.2f} s)",
        ["history", "tasks done", "ralph status s", "pick next task s"],
        rows,
    )
    print_table(
        "picking the next task, step by step (seconds, in-process)",
        ["step", "none done", "half done"],
        [[step, *values] for step, values in steps_rows.items()],
    )
    print(f"target: each <= {TARGET_S:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
