"""The sandbox's cost per start: ``bwrap ... /bin/true`` against ``/bin/true``.

Each command runs ``--runs`` times, alternating, from Python's ``subprocess`` (as ralph starts
an agent); the table gives the median and the 90th percentile in milliseconds and what the
sandbox adds. The sandboxes are the doctor's probe (no binds), a realistic attempt (a
worktree of a throwaway repository, its specs, settings and memory file read-only, the home
directory hidden but for a config folder and the programs under it, network off), the same
with the network on, and with 100 and 1,000 append-only files (capped at
``MAX_READONLY_FILES`` mounts, and uncapped to show why).

    python -m bench.sandbox --runs 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import git, print_machine, print_table, scratch
from ralph.engine.gate import matches
from ralph.runtime import sandbox
from ralph.runtime.sandbox import (
    MAX_READONLY_FILES,
    Bind,
    SandboxSpec,
    bwrap_argv,
    program_paths,
    readonly_paths,
)

TARGET_MS = 20.0


def make_worktree(root: Path, files: int, limit: int = MAX_READONLY_FILES) -> SandboxSpec:
    """A repository with specs and ``files`` append-only files, a worktree of it, and the
    spec an attempt in that worktree would get (at most ``limit`` files mounted one by one)."""
    repo = root / "repo"
    (repo / "specs").mkdir(parents=True)
    (repo / "specs" / "a.md").write_text("# A\n")
    (repo / "ralph.toml").write_text('checks = ["true"]\n')
    (repo / "AGENTS.md").write_text("# Agents\n")
    (repo / "migrations").mkdir()
    for number in range(files):
        (repo / "migrations" / f"{number:04d}.sql").write_text("select 1;\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "start")
    worktree = repo / ".ralph" / "worktrees" / "w0"
    git(repo, "worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    tracked = [name for name in git(worktree, "ls-files", "-z").split("\0") if name]
    home = Path.home().resolve()
    config = root / "config"
    config.mkdir()
    return SandboxSpec(
        worktree=worktree,
        git_common_dir=repo / ".git",
        repository=repo,
        readonly=readonly_paths(
            worktree,
            tracked,
            protected=["specs/**", "ralph.toml", "AGENTS.md"],
            append_only=["migrations/**"],
            matches=matches,
            limit=limit,
        ).paths,
        home=home,
        binds=(*program_paths(home, os.environ.get("PATH", "")), Bind(config, "rw")),
        network=False,
        bwrap=sandbox.find_bwrap() or "bwrap",
    )


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Milliseconds one run of ``argv`` takes, start to reaped."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode(errors='replace').strip()}")
    return elapsed


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each command")
    parser.add_argument(
        "--uncapped-runs", type=int, default=3, help="runs of the uncapped 1,000 mounts (slow)"
    )
    args = parser.parse_args(argv)
    probe = sandbox.check()
    if not probe.works:
        raise SystemExit(f"no sandbox here: {probe.message}")
    print_machine()
    print(f"bwrap: {probe.message}")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
    bwrap = sandbox.find_bwrap() or "bwrap"
    with scratch("sandbox") as root:
        small = make_worktree(root / "small", 3)
        hundred = make_worktree(root / "hundred", 100)
        large = make_worktree(root / "large", 1000)
        uncapped = make_worktree(root / "uncapped", 1000, limit=1000)
        commands = {
            "/bin/true": ["/bin/true"],
            "probe flags, no binds": [
                bwrap,
                *sandbox.namespace_args(False),
                *sandbox.system_args(None, False),
                "--",
                "/bin/true",
            ],
            "attempt, network off": bwrap_argv(small, ["/bin/true"]),
            "attempt, network on": bwrap_argv(replace(small, network=True), ["/bin/true"]),
            "attempt, 100 read-only files": bwrap_argv(hundred, ["/bin/true"]),
            f"attempt, 1000 files, {MAX_READONLY_FILES} mounted": bwrap_argv(large, ["/bin/true"]),
            "attempt, 1000 files all mounted": bwrap_argv(uncapped, ["/bin/true"]),
        }
        mounts = {
            name: sum(word.startswith("--") and "bind" in word for word in cmd)
            for name, cmd in commands.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for name, command in commands.items():
            if not name.endswith("all mounted"):
                timed(command, env)  # warm the page cache
        for run in range(args.runs):
            for name, command in commands.items():
                if name.endswith("all mounted") and run >= args.uncapped_runs:
                    continue
                samples[name].append(timed(command, env))
    base = statistics.median(samples["/bin/true"])
    rows = [
        [
            name,
            mounts[name],
            round(statistics.median(values), 2),
            round(percentile(values, 0.9), 2),
            round(statistics.median(values) - base, 2),
        ]
        for name, values in samples.items()
    ]
    print_table(
        f"sandbox start-up, {args.runs} runs each (ms)",
        ["command", "binds", "median", "p90", "added"],
        rows,
    )
    added = statistics.median(samples["attempt, network off"]) - base
    verdict = "within" if added < TARGET_MS else "over"
    print(f"\nan attempt's sandbox adds {added:.1f} ms: {verdict} the {TARGET_MS:.0f} ms goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
