"""Per-task overhead: ralph against the bare shell loop doing the same work.

Both get the same backlog of N specs, the same trivial agent (reads the prompt, writes one
file) and the same check (``true``). The bare loop is bench/bare_loop.sh; ralph is
``ralph run --once``. Runs alternate, each on a fresh repository; the table gives ms per
task for each and the ratio. A second table splits ralph's time per task by phase, read
from its own event log.

    python -m bench.overhead --tasks 100 --repetitions 3
    python -m bench.overhead --tasks 100 --profile py-spy   # where ralph's time goes
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from bench.common import (
    BENCH_DIR,
    TRIVIAL_AGENT,
    EventTail,
    make_repo,
    median,
    print_machine,
    print_table,
    ralph_argv,
    ralph_env,
    scratch,
    task_commits,
    task_ids,
)

TARGET_RATIO = 1.5


def run_bare(root: Path) -> float:
    """Seconds the bare loop takes over the whole backlog."""
    started = time.perf_counter()
    subprocess.run(
        ["sh", str(BENCH_DIR / "bare_loop.sh"), str(root), TRIVIAL_AGENT, "true"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def run_ralph(root: Path, wrapper: list[str] | None = None) -> float:
    """Seconds ``ralph run --once`` takes over the whole backlog (its start-up included)."""
    started = time.perf_counter()
    result = subprocess.run(
        [*(wrapper or []), *ralph_argv(root, "run", "--once")],
        env=ralph_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"ralph run --once exited {result.returncode}:\n{result.stderr.decode()[-3000:]}")
    return seconds


def ralph_startup(workdir: Path) -> float:
    """Seconds ``ralph run --once`` takes with nothing to do: the fixed cost of a run."""
    root = make_repo(workdir / "empty", [])
    times = [run_ralph(root) for _ in range(3)]
    return min(times)


# Ralph's own events, in the order one committed task emits them; each phase is the time
# from one to the next (mono clock), so they add up to the task's whole turn in the loop.
PHASES = [
    ("pick", "scan specs + history, choose the task", "task_started"),
    ("prepare", "attempt dir, prompt, baseline, intent", "attempt_started"),
    ("agent", "spawn, run and reap the agent", "agent_exited"),
    ("gate", "guard .git, stage, judge, run checks", "check_finished"),
    ("commit", "done check, commit, reset tree", "committed"),
    ("record", "state.json, task_done", "task_done"),
]


def phase_split(root: Path) -> dict[str, float]:
    """Mean ms per task of each phase, from .ralph/events.jsonl."""
    events = EventTail(root).new()
    totals: dict[str, float] = defaultdict(float)
    tasks = 0
    previous: float | None = None
    agent_process = check_process = 0.0
    for event in events:
        name, mono = str(event["event"]), float(event["mono"])  # type: ignore[arg-type]
        for phase, _what, ends_at in PHASES:
            if name == ends_at and previous is not None:
                totals[phase] += mono - previous
        if name == "agent_exited":
            agent_process += float(event["duration_s"])  # type: ignore[arg-type]
        if name == "check_finished":
            check_process += float(event["duration_s"])  # type: ignore[arg-type]
        if name == "task_done":
            tasks += 1
        if name in {"run_started", *(ends for _p, _w, ends in PHASES)}:
            previous = mono
    per_task = {phase: 1000 * total / max(tasks, 1) for phase, total in totals.items()}
    per_task["(agent process)"] = 1000 * agent_process / max(tasks, 1)
    per_task["(check process)"] = 1000 * check_process / max(tasks, 1)
    return per_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100, help="specs in the backlog (100)")
    parser.add_argument("--repetitions", type=int, default=3, help="runs of each (3)")
    parser.add_argument(
        "--uncommitted-specs",
        action="store_true",
        help="leave the specs uncommitted (ralph copies them aside before every attempt)",
    )
    parser.add_argument(
        "--profile",
        choices=["py-spy", "pyinstrument"],
        help="one more ralph run under a profiler; the profile is written to --profile-dir",
    )
    parser.add_argument("--profile-dir", type=Path, default=Path("bench-profiles"))
    parser.add_argument("--keep", action="store_true", help="keep the repositories")
    args = parser.parse_args(argv)

    print_machine()
    print(f"overhead: {args.tasks} tasks, {args.repetitions} repetitions, alternating")
    ids = task_ids(args.tasks)
    rows = []
    bare_ms: list[float] = []
    ralph_ms: list[float] = []
    with scratch("overhead", args.keep) as workdir:
        startup = ralph_startup(workdir)
        split: dict[str, float] = {}
        for rep in range(args.repetitions):
            figures: dict[str, float] = {}
            order = ["bare", "ralph"] if rep % 2 == 0 else ["ralph", "bare"]
            for kind in order:
                root = make_repo(
                    workdir / f"{kind}-{rep}", ids, commit_specs=not args.uncommitted_specs
                )
                seconds = run_bare(root) if kind == "bare" else run_ralph(root)
                done = task_commits(root)
                if done != args.tasks:
                    sys.exit(f"{kind}: {done} of {args.tasks} tasks committed")
                figures[kind] = 1000 * seconds / args.tasks
                if kind == "ralph":
                    split = phase_split(root)
                if not args.keep:
                    shutil.rmtree(root)
            bare_ms.append(figures["bare"])
            ralph_ms.append(figures["ralph"])
            rows.append(
                [
                    rep + 1,
                    " then ".join(order),
                    figures["bare"],
                    figures["ralph"],
                    figures["ralph"] / figures["bare"],
                ]
            )
        rows.append(
            ["median", "", median(bare_ms), median(ralph_ms), median(ralph_ms) / median(bare_ms)]
        )
        print_table(
            f"ms per task (N={args.tasks}; ralph includes its start-up, "
            f"{1000 * startup:.0f} ms per run)",
            ["run", "order", "bare ms/task", "ralph ms/task", "ratio"],
            rows,
        )
        steady = median(ralph_ms) - 1000 * startup / args.tasks
        print(
            f"ratio {median(ralph_ms) / median(bare_ms):.2f} (target <= {TARGET_RATIO}); "
            f"without ralph's start-up: {steady / median(bare_ms):.2f}"
        )
        what = {phase: text for phase, text, _ in PHASES}
        print_table(
            "ralph's time per task by phase (last run, from .ralph/events.jsonl)",
            ["phase", "ms/task", "what"],
            [
                [phase, ms, what.get(phase, "within the phases above")]
                for phase, ms in split.items()
            ],
        )
        count_git_processes(workdir, ids[: min(len(ids), 20)])
        if args.profile:
            profile(args, workdir, ids)
    return 0


GIT_SHIM = """#!/bin/sh
# Logs which git subcommand ran (the first word that is not an option), then runs git.
sub=
skip=
for word in "$@"; do
    if [ -n "$skip" ]; then skip=; continue; fi
    case $word in
        -c|-C|--git-dir|--work-tree|--namespace|--exec-path|--config-env) skip=1 ;;
        -*) ;;
        *) sub=$word; break ;;
    esac
done
echo "$sub" >> "{log}"
exec "{git}" "$@"
"""


def count_git_processes(workdir: Path, ids: list[str]) -> None:
    """Run both loops once more with a git that logs itself; print git processes per task."""
    real_git = shutil.which("git")
    if real_git is None:
        return
    shim_dir = workdir / "git-shim"
    shim_dir.mkdir()
    log = workdir / "git-calls.log"
    shim = shim_dir / "git"
    shim.write_text(GIT_SHIM.format(log=log, git=real_git))
    shim.chmod(0o755)
    env = {**ralph_env(), "PATH": f"{shim_dir}:{os.environ.get('PATH', '')}"}
    counts: dict[str, Counter[str]] = {}
    for kind in ("bare", "ralph"):
        root = make_repo(workdir / f"count-{kind}", ids)
        log.write_text("")
        if kind == "bare":
            argv = ["sh", str(BENCH_DIR / "bare_loop.sh"), str(root), TRIVIAL_AGENT, "true"]
        else:
            argv = ralph_argv(root, "run", "--once")
        subprocess.run(argv, env=env, check=True, capture_output=True)
        counts[kind] = Counter(log.read_text().split())
    commands = sorted(counts["ralph"] | counts["bare"], key=lambda c: -counts["ralph"][c])
    print_table(
        f"git processes per task ({len(ids)} tasks; ralph's include its start and end)",
        ["git subcommand", "bare", "ralph"],
        [
            *[[c, counts["bare"][c] / len(ids), counts["ralph"][c] / len(ids)] for c in commands],
            ["all", counts["bare"].total() / len(ids), counts["ralph"].total() / len(ids)],
        ],
    )


def profile(args: argparse.Namespace, workdir: Path, ids: list[str]) -> None:
    """One more ralph run under a profiler, written to ``args.profile_dir``."""
    out = args.profile_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    root = make_repo(workdir / "profiled", ids, commit_specs=not args.uncommitted_specs)
    if args.profile == "py-spy":
        target = out / f"overhead-{args.tasks}.pyspy.txt"
        wrapper = [
            "py-spy",
            "record",
            "--threads",
            "--idle",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(target),
            "--",
        ]
    else:
        target = out / f"overhead-{args.tasks}.pyinstrument.txt"
        wrapper = [
            sys.executable,
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--show-all",
            "--outfile",
            str(target),
        ]
        wrapper += ["-m", "ralph"]
    if args.profile == "pyinstrument":
        # pyinstrument takes the module itself; drop the interpreter and -m ralph from argv.
        argv = ralph_argv(root, "run", "--once")[3:]
        subprocess.run(
            [*wrapper, *argv],
            env=ralph_env(),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    else:
        seconds = run_ralph(root, wrapper=_venv_tool(wrapper))
        print(f"\nprofiled run: {1000 * seconds / args.tasks:.1f} ms/task under py-spy")
    print(f"profile written to {target}")


def _venv_tool(wrapper: list[str]) -> list[str]:
    """Use py-spy from this interpreter's bin/ when it is there (pip install py-spy)."""
    local = Path(sys.executable).parent / wrapper[0]
    return [str(local), *wrapper[1:]] if local.exists() else wrapper


if __name__ == "__main__":
    sys.exit(main())
