"""ralph run as a service: the lock, signals, deadlines, restarts and what the agent is given."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

Start = Callable[..., "subprocess.Popen[str]"]
FAST = {"attempt_timeout": "20s", "kill_grace": "0.5s", "poll_interval": "0.2s"}


def wait_for(condition: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def processes_with(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_gone(text: str, timeout: float = 3) -> None:
    """Fail unless every process with ``text`` in its command line has gone, shortly."""
    wait_for(lambda: not processes_with(text), timeout, f"processes with {text!r} to end")


def event_names(project: Project) -> list[str]:
    path = project.root / ".ralph" / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines() if line.strip()]


def wait_idle(project: Project, daemon: subprocess.Popen[str]) -> None:
    """Wait until the daemon has started its loop and had time to install its signal handlers."""
    wait_for(lambda: "run_started" in event_names(project) or daemon.poll() is not None)
    assert daemon.poll() is None, daemon.communicate()
    time.sleep(0.2)


@contextlib.contextmanager
def paused(daemon: subprocess.Popen[str]) -> Iterator[None]:
    """Freeze the daemon (SIGSTOP) so it can't see a half-made change; thaw it after."""
    daemon.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        daemon.send_signal(signal.SIGCONT)


def finish(daemon: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10) -> float:
    """Signal the daemon, wait for it and return how long it took to exit."""
    started = time.monotonic()
    daemon.send_signal(sig)
    try:
        daemon.wait(timeout=timeout)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    return time.monotonic() - started


@pytest.fixture(autouse=True)
def marker(project: Project) -> Iterator[Callable[[], str]]:
    """Make sleep durations no other process uses; a failed test's leftovers are killed after it."""
    made: list[str] = []

    def make() -> str:
        made.append(f"{300 + secrets.randbelow(600)}.{secrets.randbelow(10**9):09d}")
        return made[-1]

    yield make
    for text in [*made, str(project.script_path)]:
        for pid in processes_with(text):
            with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def background(project: Project) -> Iterator[Start]:
    """Start ``ralph run`` in the background; one still running at the end is stopped."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        daemon = project.popen(*args, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.poll() is None:
            finish(daemon)
        daemon.communicate()


def current_attempt(project: Project) -> dict[str, Any] | None:
    return project.current_attempt()


# --- the lock ------------------------------------------------------------------------------


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-attempt"])
def test_second_ralph_exits_75_while_a_daemon_holds_the_lock(
    project: Project, background: Start, busy: bool
) -> None:
    """While a daemon runs, idle or mid-attempt, a second `run --once` exits 75 naming the lock."""
    project.configure(**FAST)
    if busy:
        project.spec("slow")
        project.attempts("slow", {"steps": [{"write": "work.txt"}, {"sleep": 30}]})
    project.commit()
    daemon = background("run")
    if busy:
        wait_for(lambda: (project.worktree() / "work.txt").exists(), what="the agent to start")
        assert project.status_json()["slow"]["state"] == "running"
    else:
        wait_idle(project, daemon)
    started = time.monotonic()
    result = project.ralph("run", "--once", timeout=10, check_code=75)
    assert time.monotonic() - started < 5
    assert ".ralph/lock" in result.stderr
    assert str(daemon.pid) in result.stderr
    assert finish(daemon) < 5
    assert daemon.returncode == 0
    assert project.git("status", "--porcelain") == ""


def test_lock_held_by_another_process_exits_75(project: Project) -> None:
    """A lock held by any process (here a plain flock) makes `ralph run --once` exit 75."""
    project.configure(**FAST)
    project.spec("greet")
    project.commit()
    lock_path = project.root / ".ralph" / "lock"
    lock_path.parent.mkdir()
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = project.ralph("run", "--once", timeout=10, check_code=75)
    assert ".ralph/lock" in result.stderr
    assert project.task_commits() == []


# --- the user's tree -----------------------------------------------------------------------


def test_dirty_tree_stops_ralph_naming_the_files(project: Project) -> None:
    """A modified tracked file and an untracked file stop `run --once` with exit 2, untouched."""
    project.spec("greet")
    project.commit()
    head = project.head()
    project.write("README.md", "changed by the user\n")
    project.write("notes/new.txt", "untracked work\n")
    result = project.ralph("run", "--once", check_code=2)
    assert "README.md" in result.stderr
    assert "notes/new.txt" in result.stderr
    assert project.head() == head
    assert (project.root / "README.md").read_text() == "changed by the user\n"
    assert (project.root / "notes/new.txt").read_text() == "untracked work\n"


def test_ignored_files_do_not_make_the_tree_dirty(project: Project) -> None:
    """Files matched by .gitignore don't count as uncommitted changes."""
    project.write(".gitignore", "*.log\nbuild/\n")
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hi\n"}]})
    project.commit()
    project.write("debug.log", "noise\n")
    project.write("build/out.bin", "artefact\n")
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("greet", "1")]
    assert (project.root / "debug.log").read_text() == "noise\n"
    assert (project.root / "build/out.bin").read_text() == "artefact\n"


@pytest.mark.parametrize("gitignore", [None, "*.log\n"])
def test_ralph_dir_is_excluded_through_info_exclude_only(
    project: Project, gitignore: str | None
) -> None:
    """.ralph/ goes into .git/info/exclude; .gitignore is never created or changed."""
    if gitignore is not None:
        project.write(".gitignore", gitignore)
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hi\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    exclude = (project.root / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.ralph/") == 1
    gitignore_path = project.root / ".gitignore"
    if gitignore is None:
        assert not gitignore_path.exists()
    else:
        assert gitignore_path.read_text() == gitignore
    assert project.git("status", "--porcelain") == ""


# --- the daemon and signals ----------------------------------------------------------------


def test_daemon_picks_up_a_spec_added_while_idle(project: Project, background: Start) -> None:
    """An idle daemon finds a newly committed spec, commits the task, and exits 0 on SIGTERM."""
    project.configure(**FAST)
    project.commit()
    daemon = background("run")
    wait_idle(project, daemon)
    with paused(daemon):
        project.attempts("late", {"steps": [{"write": "late.txt", "content": "late\n"}]})
        project.spec("late")
        project.commit("add a spec")
    wait_for(lambda: "task_done" in event_names(project), what="the new task to be committed")
    assert finish(daemon) < 5
    assert daemon.returncode == 0
    assert project.task_commits() == [("late", "1")]
    assert project.git("status", "--porcelain") == ""


def test_daemon_picks_up_an_uncommitted_spec(project: Project, background: Start) -> None:
    """A spec dropped into specs/ without a commit is run and kept, not failed as protected."""
    project.configure(**FAST, max_attempts=1)
    project.commit()
    daemon = background("run")
    wait_idle(project, daemon)
    with paused(daemon):
        project.attempts("late", {"steps": [{"write": "late.txt", "content": "late\n"}]})
        spec_text = project.spec("late").read_text()
    wait_for(
        lambda: {"task_done", "task_failed"} & set(event_names(project)),
        what="the new task to finish",
    )
    finish(daemon)
    assert daemon.returncode == 0
    assert (project.root / "specs" / "late.md").read_text() == spec_text
    assert project.task_commits() == [("late", "1")]
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["late.txt"]


@pytest.mark.parametrize(
    ("phase", "sig"),
    [("agent", signal.SIGTERM), ("agent", signal.SIGINT), ("check", signal.SIGTERM)],
    ids=["agent-SIGTERM", "agent-SIGINT", "check-SIGTERM"],
)
def test_signal_during_an_attempt_rolls_back_and_exits_0(
    project: Project, background: Start, marker: Callable[[], str], phase: str, sig: int
) -> None:
    """A signal mid-attempt stops it, restores the tree, commits nothing and uses up no attempt."""
    sleeper = marker()
    steps: list[dict[str, Any]] = [{"write": "work.txt", "content": "half done\n"}]
    if phase == "agent":
        steps.append({"run": f"sleep {sleeper}"})
    else:
        project.configure(checks=[f"sleep {sleeper}"])
    project.configure(**FAST)
    project.spec("slow")
    project.attempts("slow", {"steps": steps})
    project.commit()
    head = project.head()
    daemon = background("run")
    wait_for(lambda: processes_with(sleeper), what=f"the {phase} to be running")
    took = finish(daemon, sig)
    assert took < 0.5 + 4
    assert daemon.returncode == 0
    assert_gone(sleeper)
    assert_gone(str(project.script_path))
    assert not (project.root / "work.txt").exists()
    assert project.git("status", "--porcelain") == ""
    assert project.head() == head
    assert project.task_commits() == []
    task = project.status_json()["slow"]
    assert (task["state"], task["attempts"]) == ("pending", 0)
    events = project.events()
    assert any(e["event"] == "rolled_back" and e["reason"] == "interrupted" for e in events)
    assert current_attempt(project) is None


def test_second_signal_skips_the_grace_period(project: Project, background: Start) -> None:
    """A second signal (SIGINT after SIGTERM) SIGKILLs a SIGTERM-ignoring agent at once."""
    project.configure(**{**FAST, "kill_grace": "20s"})
    project.spec("stubborn")
    steps = [
        {"ignore_sigterm": True},
        {"write": "ready.txt", "content": "ignoring SIGTERM now\n"},
        {"sleep": 60},
    ]
    project.attempts("stubborn", {"steps": steps})
    project.commit()
    daemon = background("run")
    wait_for(
        lambda: (project.worktree() / "ready.txt").exists(), what="the agent to ignore SIGTERM"
    )
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert daemon.poll() is None, "ralph should still be waiting out the grace period"
    finish(daemon, signal.SIGINT)
    assert time.monotonic() - started < 6
    assert daemon.returncode == 0
    assert_gone(str(project.script_path))
    assert project.git("status", "--porcelain") == ""
    assert project.task_commits() == []


# --- run options ---------------------------------------------------------------------------


@pytest.mark.parametrize("specs", [1, 3])
def test_max_tasks_stops_after_that_many_tasks(project: Project, specs: int) -> None:
    """`ralph run --max-tasks 1` attempts exactly one task, then exits 0 (even as a daemon)."""
    project.configure(**FAST)
    for name in ["a", "b", "c"][:specs]:
        project.spec(name)
        project.attempts(name, {"steps": [{"write": f"{name}.txt", "content": name}]})
    project.commit()
    project.ralph("run", "--max-tasks", "1", timeout=15, check_code=0)
    assert event_names(project).count("task_started") == 1
    assert project.task_commits() == [("a", "1")]


@pytest.mark.parametrize(
    ("specs", "code"),
    [
        pytest.param({"a": {}, "b": {"depends_on": ["a"]}}, 0, id="all-done"),
        pytest.param({"a": {}, "b": {"checks": ["false"]}}, 1, id="one-failed"),
        pytest.param(
            {"a": {"checks": ["false"]}, "b": {"depends_on": ["a"]}}, 1, id="blocked-by-failed"
        ),
        pytest.param({"a": {}, "b": {"depends_on": ["missing"]}}, 1, id="blocked-by-unknown"),
    ],
)
def test_once_exit_code(project: Project, specs: dict[str, dict[str, Any]], code: int) -> None:
    """`run --once` exits 0 when every runnable task is done and 1 when one failed or is blocked."""
    project.configure(**FAST, max_attempts=1)
    for name, front in specs.items():
        project.spec(name, **front)
        project.attempts(name, {"steps": [{"write": f"{name}.txt", "content": name}]})
    project.commit()
    project.ralph("run", "--once", check_code=code)
    a_done = not specs["a"].get("checks")
    assert (("a", "1") in project.task_commits()) == a_done


def test_deadline_stops_a_running_attempt(project: Project) -> None:
    """Past --deadline the running attempt is stopped and rolled back; ralph exits 0, no commit."""
    project.configure(**FAST)
    project.spec("slow")
    project.attempts(
        "slow", {"steps": [{"write": "work.txt", "content": "half done\n"}, {"sleep": 30}]}
    )
    project.commit()
    started = time.monotonic()
    project.ralph("run", "--once", "--deadline", "2s", timeout=15, check_code=0)
    assert time.monotonic() - started < 8
    assert project.task_commits() == []
    assert not (project.root / "work.txt").exists()
    assert project.git("status", "--porcelain") == ""
    assert_gone(str(project.script_path))
    events = project.events()
    assert [e["outcome"] for e in events if e["event"] == "agent_exited"] == ["stopped"]
    assert any(e["event"] == "rolled_back" for e in events)
    assert project.status_json()["slow"]["attempts"] == 0


def test_deadline_ends_an_idle_daemon(project: Project) -> None:
    """A daemon with nothing to do exits 0 once its --deadline has passed."""
    project.configure(**FAST)
    project.commit()
    started = time.monotonic()
    project.ralph("run", "--deadline", "1s", timeout=10, check_code=0)
    assert time.monotonic() - started < 6


def test_bad_deadline_is_a_usage_error(project: Project) -> None:
    """`--deadline soon` exits 2 naming the flag, before any work."""
    project.spec("greet")
    project.commit()
    result = project.ralph("run", "--once", "--deadline", "soon", check_code=2)
    assert "--deadline" in result.stderr
    assert not (project.root / ".ralph" / "events.jsonl").exists()
    assert project.task_commits() == []


# --- failed tasks and retry ----------------------------------------------------------------


def failing_project(project: Project) -> None:
    """One task that always fails its check and one that passes."""
    project.configure(**FAST, max_attempts=1)
    project.spec("broken", checks=["test -f never-there.txt"])
    project.spec("fine")
    project.attempts("broken", {"steps": [{"write": "broken.txt", "content": "x"}]})
    project.attempts("fine", {"steps": [{"write": "fine.txt", "content": "y"}]})
    project.commit()
    project.ralph("run", "--once", check_code=1)


def test_failed_task_stays_failed_across_runs(project: Project) -> None:
    """A task that used up its attempts is not attempted by the next run, which still exits 1."""
    failing_project(project)
    assert event_names(project).count("attempt_started") == 2
    project.ralph("run", "--once", check_code=1)
    assert event_names(project).count("attempt_started") == 2
    task = project.status_json()["broken"]
    assert (task["state"], task["attempts"]) == ("failed", 1)


def test_retry_puts_a_failed_task_back_to_pending(project: Project) -> None:
    """`ralph retry ID` makes a failed task pending again with no attempts used."""
    failing_project(project)
    result = project.ralph("retry", "broken", check_code=0)
    assert "broken" in result.stdout
    task = project.status_json()["broken"]
    assert (task["state"], task["attempts"]) == ("pending", 0)
    assert "task_retried" in event_names(project)


@pytest.mark.parametrize(("task_id", "code"), [("nope", 2), ("fine", 1)])
def test_retry_refuses_unknown_and_not_failed_tasks(
    project: Project, task_id: str, code: int
) -> None:
    """`ralph retry` of an unknown id exits 2; of a task that is not failed (here done) exits 1."""
    project.spec("fine")
    project.commit()
    project.git("commit", "-q", "--allow-empty", "-m", "Fine\n\nRalph-Task: fine\nRalph-Attempt: 1")
    result = project.ralph("retry", task_id, check_code=code)
    assert task_id in result.stderr
    assert not (project.root / ".ralph" / "state.json").exists()


def test_editing_a_failed_spec_makes_it_pending(project: Project) -> None:
    """Changing a failed task's spec file resets it to pending with no attempts used."""
    failing_project(project)
    project.spec("broken", "# Broken, reworded\n\nTry again.\n", checks=["test -f broken.txt"])
    task = project.status_json()["broken"]
    assert (task["state"], task["attempts"]) == ("pending", 0)


# --- crash recovery and stuck agents -------------------------------------------------------


def test_restart_after_sigkill_recovers_the_interrupted_attempt(
    project: Project, background: Start, marker: Callable[[], str]
) -> None:
    """After a SIGKILL mid-attempt, the next run kills the agent, keeps the diff and retries."""
    sleeper = marker()
    project.configure(**FAST)
    project.spec("crash")
    project.attempts(
        "crash",
        {"steps": [{"write": "partial.txt", "content": "partial\n"}, {"run": f"sleep {sleeper}"}]},
        {"steps": [{"write": "done.txt", "content": "done\n"}]},
    )
    project.commit()
    daemon = background("run")
    wait_for(
        lambda: (
            (project.worktree() / "partial.txt").exists()
            and (current_attempt(project) or {}).get("pgid")
            and processes_with(sleeper)
        ),
        what="the agent to be running with its pgid recorded",
    )
    daemon.kill()
    daemon.wait()
    assert processes_with(sleeper), "the agent runs in its own session and outlives ralph"
    project.ralph("run", "--once", timeout=20, check_code=0)
    assert_gone(sleeper)
    assert_gone(str(project.script_path))
    diffs = list((project.root / ".ralph" / "attempts").rglob("interrupted.diff"))
    assert len(diffs) == 1
    assert "partial.txt" in diffs[0].read_text()
    assert project.task_commits() == [("crash", "2")]
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["done.txt"]
    assert project.git("status", "--porcelain") == ""
    assert current_attempt(project) is None


def test_hung_agent_and_term_ignoring_grandchild_are_killed(
    project: Project, marker: Callable[[], str]
) -> None:
    """Past attempt_timeout the whole agent group goes, even a grandchild that ignores SIGTERM."""
    stubborn, plain = marker(), marker()
    project.configure(attempt_timeout="1s", kill_grace="0.5s", max_attempts=1)
    project.spec("hung")
    command = f"sh -c 'trap \"\" TERM; sleep {stubborn}' & sleep {plain}"
    project.attempts("hung", {"steps": [{"run": command}]})
    project.commit()
    started = time.monotonic()
    project.ralph("run", "--once", timeout=20, check_code=1)
    assert time.monotonic() - started < 10
    assert_gone(stubborn)
    assert_gone(plain)
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert [e["reason"] for e in rolled] == ["timeout"]
    assert project.status_json()["hung"]["state"] == "failed"


# --- the agent's command and environment ---------------------------------------------------


@pytest.mark.parametrize("via", ["prompt_file", "stdin"])
def test_command_agent_receives_the_spec(project: Project, tmp_path: Path, via: str) -> None:
    """A `command` agent gets the prompt through {prompt_file} or, without it, on stdin."""
    got = tmp_path / "got-prompt.txt"
    if via == "prompt_file":
        script = tmp_path / "agent.sh"
        script.write_text(f'cp "$1" {got}\necho made > made.txt\n')
        command = f"sh {script} {{prompt_file}}"
    else:
        command = f"sh -c 'cat > {got}; echo made > made.txt'"
    project.configure(**FAST, agent="command", agent_command=command)
    project.spec("cmd", "# Command agent\n\nThe secret word is zanzibar-42.\n")
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert "zanzibar-42" in got.read_text()
    assert project.task_commits() == [("cmd", "1")]
    assert (project.root / "made.txt").read_text() == "made\n"


def test_command_agent_with_a_missing_executable_is_a_settings_error(project: Project) -> None:
    """`agent = "command"` naming a program that doesn't exist exits 2 naming it."""
    project.configure(agent="command", agent_command="no-such-agent-7f3a --go {prompt_file}")
    project.spec("greet")
    project.commit()
    result = project.ralph("run", "--once", check_code=2)
    assert "no-such-agent-7f3a" in result.stderr
    assert not (project.root / ".ralph" / "events.jsonl").exists()


def test_agent_environment(project: Project, tmp_path: Path) -> None:
    """The agent gets the four RALPH_* variables and not CLAUDECODE from ralph's environment."""
    dump = tmp_path / "agent-env.txt"
    project.configure(**FAST)
    project.spec("envy")
    project.attempts("envy", {"steps": [{"run": f"env > {dump}"}, {"write": "x.txt"}]})
    project.commit()
    project.ralph("run", "--once", env={"CLAUDECODE": "1"}, check_code=0)
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert env["RALPH_TASK_ID"] == "envy"
    assert env["RALPH_ATTEMPT"] == "1"
    prompt = Path(env["RALPH_PROMPT_FILE"])
    assert prompt.is_file() and "Do envy." in prompt.read_text()
    assert prompt.is_relative_to(project.root / ".ralph")
    assert Path(env["RALPH_LEARNINGS_FILE"]).parent == prompt.parent
    assert "CLAUDECODE" not in env


# --- an idle daemon lives until it is told to stop -----------------------------------------

# Longer than watchfiles' internal 5 s wait, after which the old code took its own watcher's
# end for a stop request, and many poll intervals.
IDLE_FOR = 7.0


def run_finished(project: Project) -> list[dict[str, Any]]:
    path = project.root / ".ralph" / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [event for event in events if event["event"] == "run_finished"]


def test_idle_daemon_stays_up_until_sigterm(project: Project, background: Start) -> None:
    """An idle daemon outlives many poll intervals, does a new spec, and ends only on SIGTERM."""
    project.configure(**{**FAST, "poll_interval": "0.3s"})
    project.commit()
    daemon = background("run")
    wait_idle(project, daemon)
    time.sleep(IDLE_FOR)
    assert daemon.poll() is None, daemon.communicate()
    with paused(daemon):
        project.attempts("late", {"steps": [{"write": "late.txt", "content": "late\n"}]})
        project.spec("late")
        project.commit("add a spec")
    wait_for(lambda: "task_done" in event_names(project), what="the new task to be committed")
    time.sleep(1.0)
    assert daemon.poll() is None, daemon.communicate()
    assert finish(daemon) < 5
    assert daemon.returncode == 0
    assert [event["reason"] for event in run_finished(project)] == ["signal"]


def test_a_persons_uncommitted_edit_neither_stops_nor_waits_the_daemon(
    project: Project, background: Start
) -> None:
    """A person editing a file while the daemon runs doesn't stop it or make it wait: the
    task lands beside the edit, which stays as the person left it, uncommitted."""
    project.configure(**{**FAST, "poll_interval": "0.3s"})
    project.commit()
    daemon = background("run")
    wait_idle(project, daemon)
    with paused(daemon):
        project.attempts("late", {"steps": [{"write": "late.txt", "content": "late\n"}]})
        project.spec("late")
        project.commit("add a spec")
        project.write("README.md", "edited by a person\n")
    wait_for(lambda: "task_done" in event_names(project), what="the task to land")
    time.sleep(IDLE_FOR / 2)
    assert daemon.poll() is None, daemon.communicate()
    assert (project.root / "README.md").read_text() == "edited by a person\n"
    assert (project.root / "late.txt").read_text() == "late\n"
    assert project.git("status", "--porcelain") == " M README.md\n"
    assert finish(daemon) < 5
    assert daemon.returncode == 0


@pytest.mark.parametrize(
    ("args", "reason", "code"),
    [(("--once",), "backlog_done", 0), (("--max-tasks", "1"), "max_tasks", 0)],
)
def test_run_finished_says_why_the_run_ended(
    project: Project, args: tuple[str, ...], reason: str, code: int
) -> None:
    """The run_finished event names why the loop ended."""
    project.configure(**FAST)
    project.attempts("one", {"steps": [{"write": "one.txt", "content": "1\n"}]})
    project.spec("one")
    project.commit()
    project.ralph("run", *args, check_code=code, timeout=30)
    assert [event["reason"] for event in run_finished(project)] == [reason]
