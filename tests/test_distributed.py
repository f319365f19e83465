"""Many machines: `ralph run` processes, each in its own clone, share one backlog through a
real PostgreSQL and land on a bare repository standing in for the remote."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import git, to_toml

pytest.register_assert_rewrite("postgres")
pytest_plugins = ["postgres"]

CHECK = 'for f in tasks/*.txt; do [ "$(cat "$f")" = ok ] || exit 1; done'


class Fleet:
    """A bare remote, a seed clone that wrote the backlog, and one clone per process."""

    def __init__(self, base: Path, queue: str) -> None:
        self.base = base
        self.queue = queue
        self.remote = base / "remote.git"
        git(base, "init", "-q", "--bare", "-b", "main", str(self.remote))
        self.procs: list[subprocess.Popen[str]] = []

    def seed(self, tasks: int, agent: str, **settings: Any) -> None:
        seed = self.clone("seed")
        (seed / "specs").mkdir()
        for n in range(1, tasks + 1):
            spec = f"# Task t{n:02d}\n\nWrite tasks/t{n:02d}.txt.\n"
            (seed / "specs" / f"t{n:02d}.md").write_text(spec)
        (seed / "AGENTS.md").write_text("# Agents\n")
        table = {
            "agent": "command",
            "agent_command": agent,
            "checks": [CHECK],
            "queue": self.queue,
            "stall_timeout": "3s",
            "poll_interval": "0.5s",
            "kill_grace": "0.5s",
            **settings,
        }
        (seed / "ralph.toml").write_text(to_toml(table))
        git(seed, "add", "-A")
        git(seed, "commit", "-q", "-m", "backlog")
        git(seed, "push", "-q", "origin", "main")

    def clone(self, name: str) -> Path:
        path = self.base / name
        if not path.exists():
            git(self.base, "clone", "-q", str(self.remote), str(path))
            git(path, "config", "user.name", name)
            git(path, "config", "user.email", f"{name}@example.invalid")
        else:
            git(path, "pull", "-q", "--ff-only")
        return path

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        # A restart after a kill starts ralph in the clone as it was left, as an operator's
        # supervisor would: no pull of ours (a killed git may have left a lock behind).
        clone = self.base / name if (self.base / name).exists() else self.clone(name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ralph", "-C", str(clone), "--log-format", "json", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
        )
        self.procs.append(proc)
        return proc

    def done_on_remote(self) -> collections.Counter[str]:
        out = git(
            self.remote, "log", "main", "--format=%(trailers:key=Ralph-Task,valueonly,separator=)"
        )
        return collections.Counter(line.strip() for line in out.splitlines() if line.strip())

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.communicate()


@pytest.fixture
def fleet(tmp_path: Path, postgres_url: str) -> Iterator[Fleet]:
    """A fleet's remote and clones in tmp_path, its queue a fresh database."""
    the_fleet = Fleet(tmp_path, postgres_url)
    yield the_fleet
    the_fleet.stop_all()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


GOOD_AGENT = "sh -c 'sleep 0.5; mkdir -p tasks; echo ok > tasks/$RALPH_TASK_ID.txt'"


def test_three_processes_do_every_task_exactly_once(fleet: Fleet) -> None:
    """Three `ralph run --once` in three clones finish a shared backlog, each task once on
    the remote, with the push races between them resolved by re-checking."""
    fleet.seed(9, GOOD_AGENT)
    procs = [fleet.start(name, "--once") for name in ("a", "b", "c")]
    for proc in procs:
        proc.wait(timeout=180)
    assert [proc.returncode for proc in procs] == [0, 0, 0], [p.stderr for p in procs]
    assert fleet.done_on_remote() == collections.Counter(f"t{n:02d}" for n in range(1, 10))
    committers = set(git(fleet.remote, "log", "main", "--format=%cn").split())
    assert len(committers & {"a", "b", "c"}) >= 2, "only one process did the work"
    stats = subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(fleet.base / "a"), "stats", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    queue = json.loads(stats.stdout)["queue"]  # the whole fleet's view, from any clone
    assert queue["jobs"].get("succeeded") == 9, queue
    assert queue["processes"] == 0  # all three have left


def test_two_processes_with_two_workers_each_land_every_task_once(fleet: Fleet) -> None:
    """Workers of one process fetch and land side by side: their fetches never collide,
    and no attempt's guard puts back a remote-tracking ref another worker's fetch moved."""
    fleet.seed(10, GOOD_AGENT, workers=2, poll_interval="30s")
    started = time.monotonic()
    procs = [fleet.start(name, "--once") for name in ("a", "b")]
    for proc in procs:
        proc.wait(timeout=180)
    assert [proc.returncode for proc in procs] == [0, 0], [p.stderr for p in procs]
    assert fleet.done_on_remote() == collections.Counter(f"t{n:02d}" for n in range(1, 11))
    for proc in procs:
        assert "refs/remotes" not in proc.stderr
    # A batch run that waits for the other's last tasks looks again within a second or
    # so, not after poll_interval.
    assert time.monotonic() - started < 30


FORGING_AGENT = (
    "sh -c 'mkdir -p tasks; echo ok > tasks/$RALPH_TASK_ID.txt; "
    'forged=$(printf "forged\\n\\nRalph-Task: t02\\n" | git commit-tree HEAD^{tree} -p HEAD); '
    "git update-ref refs/remotes/origin/main $forged'"
)


def test_a_forged_remote_tracking_ref_makes_no_task_done(fleet: Fleet) -> None:
    """An agent points refs/remotes/origin/main at a commit claiming another task: ralph
    reads the remote only from the tip it fetched itself, so that task is still done, once,
    on the remote."""
    fleet.seed(2, FORGING_AGENT, workers=1)
    proc = fleet.start("a", "--once")
    proc.wait(timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert fleet.done_on_remote() == collections.Counter(["t01", "t02"])
    subjects = git(fleet.remote, "log", "main", "--format=%s").splitlines()
    assert "forged" not in subjects


def test_a_killed_process_loses_its_task_to_another(fleet: Fleet) -> None:
    """A process SIGKILLed mid-attempt loses its claim after stall_timeout; another process
    takes the task up and finishes it; nothing is done twice."""
    slow = "sh -c 'mkdir -p tasks; echo ok > tasks/$RALPH_TASK_ID.txt; sleep 30'"
    fleet.seed(1, slow, attempt_timeout="60s")
    victim = fleet.start("a")
    clone_a = fleet.base / "a"
    wait_for(lambda: list(clone_a.glob(".ralph/worktrees/w0/tasks/*.txt")), 60, "a's agent")
    victim.kill()
    victim.wait()
    fast = GOOD_AGENT
    clone_b = fleet.clone("b")
    settings = (clone_b / "ralph.toml").read_text().replace(slow, fast)
    (clone_b / "ralph.toml").write_text(settings)  # b's agent is quick (uncommitted here)
    git(clone_b, "update-index", "--assume-unchanged", "ralph.toml")
    started = time.monotonic()
    rescuer = fleet.start("b", "--once")
    rescuer.wait(timeout=120)
    assert rescuer.returncode == 0, rescuer.stderr
    assert fleet.done_on_remote() == collections.Counter(["t01"])
    assert time.monotonic() - started < 3 + 30


def test_once_exits_75_while_postgresql_is_unreachable(fleet: Fleet, tmp_path: Path) -> None:
    """`ralph run --once` against a queue nobody answers exits 75 at once (try again later)."""
    fleet.queue = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    fleet.seed(1, GOOD_AGENT)
    started = time.monotonic()
    proc = fleet.start("a", "--once")
    proc.wait(timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert time.monotonic() - started < 30
    assert fleet.done_on_remote() == collections.Counter()


def test_the_daemon_waits_for_postgresql_and_says_so(fleet: Fleet) -> None:
    """The daemon started while PostgreSQL is unreachable keeps trying with backoff and says
    so, instead of exiting."""
    fleet.queue = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    fleet.seed(1, GOOD_AGENT)
    proc = fleet.start("a")
    time.sleep(8)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert "ralph.queue_waiting" in err


def test_status_shows_who_holds_which_task(fleet: Fleet) -> None:
    """With a queue, `ralph status --json` says which host and process hold a task."""
    slow = "sh -c 'mkdir -p tasks; echo ok > tasks/$RALPH_TASK_ID.txt; sleep 20'"
    fleet.seed(1, slow)
    proc = fleet.start("a")
    clone = fleet.base / "a"

    def holder() -> dict[str, Any] | None:
        result = subprocess.run(
            [sys.executable, "-m", "ralph", "-C", str(clone), "status", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return None
        task = {t["id"]: t for t in json.loads(result.stdout)["tasks"]}["t01"]
        return task if task.get("held_by") else None

    task = wait_for(holder, 60, "the holder")
    assert task["held_by"]["pid"] == proc.pid


def test_fault_campaign_across_processes(fleet: Fleet) -> None:
    """Processes SIGKILLed at random and restarted: every task once on the remote, every
    task commit passes the check, and no agent outlives its process."""
    kills_wanted = int(os.environ.get("FLEET_KILLS", "8"))
    rng = random.Random(int(os.environ.get("FLEET_SEED", "3")))
    tasks = 12
    agent = "sh -c 'sleep 0.3; mkdir -p tasks; echo ok > tasks/$RALPH_TASK_ID.txt'"
    fleet.seed(tasks, agent)
    names = ["a", "b", "c"]
    running = {name: fleet.start(name) for name in names}
    kills = 0
    deadline = time.monotonic() + 240
    while kills < kills_wanted and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 2.0))
        name = rng.choice(names)
        running[name].kill()
        running[name].wait()
        kills += 1
        running[name] = fleet.start(name)
        if sum(fleet.done_on_remote().values()) >= tasks:
            break
    wait_for(lambda: len(fleet.done_on_remote()) == tasks, 240, "every task on the remote")
    fleet.stop_all()
    done = fleet.done_on_remote()
    assert set(done) == {f"t{n:02d}" for n in range(1, tasks + 1)}
    assert all(count == 1 for count in done.values()), done
    for sha in git(fleet.remote, "log", "main", "--format=%H", "--grep=^Ralph-Task:").split():
        for name in git(fleet.remote, "ls-tree", "--name-only", sha, "tasks/").split():
            assert git(fleet.remote, "show", f"{sha}:{name}").strip() == "ok"
    leftovers = subprocess.run(
        ["pgrep", "-f", "echo ok > tasks"], capture_output=True, text=True, check=False
    ).stdout.split()
    assert leftovers == []
    print("fleet fault figures:", json.dumps({"kills": kills, "tasks": tasks}))
