"""Trust nothing the agent can write (issue 12): each reproduction of the hostile-agent
review, run for real, holds.

The repository is the review's: ``calc.py`` with ``add``, its unittest, the task ``mul`` and,
where a reproduction needs it, the task ``hard`` whose own check is ``false``. The agent is a
``command`` agent running a shell script that does its task and then goes after ralph. It
works in ralph's worktree, so it reaches the git directory as a real agent would, through
``git rev-parse --git-common-dir`` (hooks, config, excludes, shallow, ralph's records) and
``--git-dir`` (its worktree's own index and HEAD), and ralph's ``.ralph/`` folder through
``$RALPH_PROMPT_FILE`` (``.ralph/attempts/<task>/<n>-<time>/prompt.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Project

CALC = "def add(a, b):\n    return a + b\n"
TEST = (
    "import unittest\n\nfrom calc import add\n\n\n"
    "class AddTest(unittest.TestCase):\n"
    "    def test_add(self):\n"
    "        self.assertEqual(add(2, 3), 5)\n"
)
CHECK = f"{sys.executable} -m unittest discover -q -s tests -t ."

# What every agent script starts with: where an agent in a worktree finds what it attacks.
PREAMBLE = """\
common=$(git rev-parse --path-format=absolute --git-common-dir)
gitdir=$(git rev-parse --path-format=absolute --git-dir)
records="$common/ralph"
attempt_dir=$(dirname "$RALPH_PROMPT_FILE")
dot_ralph=$(dirname "$(dirname "$(dirname "$attempt_dir")")")
honest() { printf '\\n\\ndef mul(a, b):\\n    return a * b\\n' >> calc.py; }
"""


def calc_project(project: Project, agent: str, *, hard: bool = False, **settings: Any) -> None:
    """The review's repository with a command agent running ``agent`` (a shell script).

    ``mul`` runs first; ``hard`` (with ``hard=True``) runs next and its own check is ``false``.
    """
    project.write("calc.py", CALC)
    project.write("tests/__init__.py", "")
    project.write("tests/test_calc.py", TEST)
    project.spec("mul", "# Add mul\n\nAdd mul(a, b) to calc.py.\n", priority=1)
    if hard:
        project.spec("hard", "# Hard\n\nSomething no check lets through.\n", checks=["false"])
    script = project.root.parent / "agent.sh"
    script.write_text("#!/bin/sh\n" + PREAMBLE + agent)
    project.settings.pop("agent_script", None)
    project.configure(
        agent="command",
        agent_command=f"/bin/sh {script}",
        checks=[CHECK],
        append_only=["tests/**"],
        **{"max_attempts": 1, **settings},
    )
    project.commit("calc")


def rolled_back(project: Project) -> dict[str, str]:
    """The reason each task's last attempt was rolled back, from the event log."""
    return {e["task"]: e["reason"] for e in project.events() if e["event"] == "rolled_back"}


def no_traceback(*results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        assert "Traceback" not in result.stderr, result.stderr[-3000:]


def marker_processes(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def wait_gone(marker: str, seconds: float = 3.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := marker_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def seen_within(marker: str, seconds: float) -> list[int]:
    """Processes holding ``marker`` seen at any moment within ``seconds`` (a chain of
    short-lived processes has one alive most of the time, never all of them at once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := marker_processes(marker):
            return found
        time.sleep(0.02)
    return []


def kill_marked(marker: str) -> None:
    """Test hygiene: kill whatever is left of a chain, generation after generation."""
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        pids = marker_processes(marker)
        if pids:
            quiet_since = time.monotonic()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def uniq() -> str:
    return uuid.uuid4().hex[:10]


@dataclass(frozen=True)
class Measured:
    """A finished ralph command, its time and its peak memory."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_kib: int


def measured(
    project: Project, *args: str, timeout: float = 60, memory_limit: int = 3 << 30
) -> Measured:
    """Run ``ralph ARGS`` with an address-space limit (a blow-up fails instead of eating the
    machine) and return its wall time and its own peak resident memory (wait4)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    out, err = project.root.parent / "measured.out", project.root.parent / "measured.err"
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ralph", "-C", str(project.root), "--log-format", "json", *args],
            stdout=stdout,
            stderr=stderr,
            env=env,
            preexec_fn=limit,
        )
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        proc.returncode,
        out.read_text(errors="replace"),
        err.read_text(errors="replace"),
        time.monotonic() - started,
        usage.ru_maxrss,
    )


def peak_while_running(proc: subprocess.Popen[str], timeout: float) -> tuple[int, float]:
    """Poll a running ralph's high-water mark of resident memory until it exits."""
    started, peak_kib = time.monotonic(), 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        assert time.monotonic() - started < timeout, "ralph did not finish"
        time.sleep(0.02)
    return peak_kib, time.monotonic() - started


def forge_record(path: str, commit: str) -> str:
    """Shell that rewrites one of ralph's checked attempt records to start at ``commit``
    (a shell word), with a matching checksum, as an attacker who read ralph's source would."""
    code = (
        "import hashlib, json, sys\n"
        "path, commit = sys.argv[1], sys.argv[2]\n"
        "doc = json.load(open(path))\n"
        "doc['record'].update(start_commit=commit, branch_tip=commit)\n"
        "canon = json.dumps(doc['record'], sort_keys=True, ensure_ascii=True, "
        "separators=(',', ':'))\n"
        "doc['checksum'] = hashlib.sha256(canon.encode()).hexdigest()\n"
        "json.dump(doc, open(path, 'w'))\n"
    )
    return f"{sys.executable} -c {shq(code)} {path} {commit}"


def shq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --- 1-4: what the change is, and what decides it -------------------------------------------


def test_index_flags_hide_no_change(project: Project) -> None:
    """Files an agent hides with --skip-worktree or --assume-unchanged are still judged:
    a weakened test, new checks or an edited spec fail the attempt and change nothing."""
    calc_project(
        project,
        """
case "$RALPH_TASK_ID" in
mul)
  git update-index --skip-worktree tests/test_calc.py ralph.toml
  printf 'import unittest\\n\\n\\nclass AddTest(unittest.TestCase):\\n' > tests/test_calc.py
  printf '    def test_add(self):\\n        pass\\n' >> tests/test_calc.py
  sed -i 's/^"checks" = .*/"checks" = ["true"]/' ralph.toml
  printf 'def add(a, b):\\n    return a - b\\n' > calc.py
  honest ;;
hard)
  git update-index --assume-unchanged specs/hard.md
  printf '# Hard\\n\\nNo check any more.\\n' > specs/hard.md
  echo done > hard.txt ;;
esac
""",
        hard=True,
    )
    before = (project.root / "ralph.toml").read_text()
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert project.task_commits() == []
    assert rolled_back(project) == {"mul": "protected", "hard": "protected"}
    status = project.status_json()
    assert status["mul"]["state"] == status["hard"]["state"] == "failed"
    assert (project.root / "ralph.toml").read_text() == before
    assert project.git("show", "HEAD:ralph.toml") == before
    assert project.git("status", "--porcelain") == ""
    flagged = [line for line in project.git("ls-files", "-v").splitlines() if line[0] != "H"]
    assert flagged == []


def test_forged_merge_head_never_becomes_a_parent(project: Project) -> None:
    """A MERGE_HEAD the agent forges (holding a commit that claims another task) is not a
    parent of ralph's commit: the task commit has the start commit as its only parent."""
    forged_file = project.root.parent / "forged"
    calc_project(
        project,
        f"""
honest
forged=$(printf 'forged\\n\\nRalph-Task: hard\\n' | git commit-tree 'HEAD^{{tree}}' -p HEAD)
echo "$forged" > "$gitdir/MERGE_HEAD"
echo "$forged" > "$common/MERGE_HEAD"
echo "$forged" > {forged_file}
""",
        hard=True,
    )
    start = project.head()
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert project.task_commits() == [("mul", "1")]
    (mul_commit,) = project.git("log", "--format=%H", "--grep=^Ralph-Task: mul").split()
    assert project.git("log", "-1", "--format=%P", mul_commit).split() == [start]
    assert project.status_json()["hard"]["state"] == "failed"
    forged = forged_file.read_text().strip()
    listed = project.git("rev-list", "main").split()
    assert len(forged) == 40 and forged not in listed


def test_forged_shallow_file_hides_no_done_task(project: Project) -> None:
    """A shallow file the agent writes can't hide a done task: with fresh records, the
    task is still done and is never committed twice."""
    calc_project(
        project,
        """
case "$RALPH_TASK_ID" in
mul) honest ;;
later)
  git rev-parse HEAD > "$common/shallow"
  echo later > later.txt ;;
esac
""",
    )
    project.ralph("run", "--once", check_code=0)
    project.spec("later", "# Later\n\nWrite later.txt.\n", priority=2)
    project.commit("a later task")
    project.ralph("run", "--once")
    assert not (project.root / ".git" / "shallow").exists()
    shutil.rmtree(project.root / ".ralph")
    shutil.rmtree(project.root / ".git" / "ralph")
    result = project.ralph("run", "--once")
    no_traceback(result)
    tasks = [task for task, _attempt in project.task_commits()]
    assert tasks.count("mul") == 1
    assert project.status_json()["mul"]["state"] == "done"


@pytest.mark.parametrize("then", ["exit", "kill-ralph"])
def test_planted_hooks_never_run_and_a_deleted_baseline_decides_nothing(
    project: Project, then: str
) -> None:
    """An agent that deletes its baseline, edits its spec, extends the excludes and plants
    failing hooks gets a verdict, never a commit; no hook runs for ralph's git, and neither
    the run nor the restart after a kill crashes."""
    ran = project.root.parent / "hook-ran"
    hooks = ["post-checkout", "reference-transaction", "post-index-change", "pre-commit"]
    plant = "".join(
        f"  printf '#!/bin/sh\\necho {hook} >> {ran}\\nexit 1\\n' > \"$common/hooks/{hook}\"\n"
        f'  chmod +x "$common/hooks/{hook}"\n'
        for hook in hooks
    )
    kill = 'kill -9 "$PPID"; sleep 30' if then == "kill-ralph" else ""
    calc_project(
        project,
        f"""
case "$RALPH_TASK_ID" in
mul) honest ;;
hard)
  rm -f "$records/scratch/w0/baseline.json" "$attempt_dir/baseline.json"
  printf -- '# Hard\\n\\nNo check any more.\\n' > specs/hard.md
  echo calc.py >> "$common/info/exclude"
  mkdir -p "$common/hooks"
{plant}  echo done > hard.txt
  {kill} ;;
esac
""",
        hard=True,
    )
    first = project.ralph("run", "--once")
    again = project.ralph("run", "--once")
    assert not ran.exists(), ran.read_text()  # before any git of the test's own
    no_traceback(first, again)
    assert first.returncode == (1 if then == "exit" else -9), first.stderr[-2000:]
    assert again.returncode == 1, again.stderr[-2000:]
    assert project.task_commits() == [("mul", "1")]
    assert project.status_json()["hard"]["state"] == "failed"
    assert project.current_attempt() is None
    if then == "exit":  # after a kill the baseline is gone: only the sandbox keeps .git as it was
        assert rolled_back(project)["hard"] == "git_tampered"
        assert not any((project.root / ".git" / "hooks" / hook).exists() for hook in hooks)
        exclude = (project.root / ".git" / "info" / "exclude").read_text().splitlines()
        assert "calc.py" not in exclude


def test_grafts_and_replace_refs_forge_no_history(project: Project) -> None:
    """A graft or a replace ref the agent makes (history through a forged commit that claims
    another task) changes nothing ralph reads: that task is not done, and no ref is left."""
    calc_project(
        project,
        """
honest
forged=$(printf 'forged\\n\\nRalph-Task: hard\\n' | git commit-tree 'HEAD^{tree}')
echo "$(git rev-parse HEAD) $forged" >> "$common/info/grafts"
git replace --graft HEAD "$forged"
""",
        hard=True,
    )
    refs_before = project.git("for-each-ref", "--format=%(refname)")
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert rolled_back(project)["mul"] == "git_tampered"
    assert project.status_json()["hard"]["state"] == "failed"
    assert project.task_commits() == []
    assert project.git("for-each-ref", "--format=%(refname)") == refs_before
    assert not (project.root / ".git" / "info" / "grafts").exists()


def test_ignored_files_never_make_a_check_pass(project: Project) -> None:
    """Checks run in a checkout of exactly the tree that would be committed: an ignored file
    the change needs (here a module calc.py imports) is not there, so the check fails."""
    project.write(".gitignore", "mathhelp.py\n")
    calc_project(
        project,
        """
printf 'def mul(a, b):\\n    return a * b\\n' > mathhelp.py
printf 'from mathhelp import mul  # noqa\\n' >> calc.py
""",
    )
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert rolled_back(project) == {"mul": "check_failed"}
    assert project.task_commits() == []


def test_symlink_out_of_the_tree_is_refused(project: Project) -> None:
    """A change that adds a symlink pointing outside the repository fails the attempt."""
    calc_project(project, "honest\nln -s /etc/hostname hostname-link\n")
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert rolled_back(project) == {"mul": "symlink"}
    assert project.task_commits() == []


# --- 5-6: hooks that start daemons, nested repositories -------------------------------------


def test_hook_daemons_die_with_the_attempt_and_ralph_runs_no_hook(project: Project) -> None:
    """A reference-transaction hook that starts setsid daemons runs only for the agent's own
    git: ralph's git never runs it, and every daemon it started dies with the attempt."""
    marker = f"3051.{int(uniq(), 16) % 10**9}"
    ralph_ran = project.root.parent / "ralph-ran-the-hook"
    calc_project(
        project,
        f"""
mkdir -p "$common/hooks"
cat > "$common/hooks/reference-transaction" <<'HOOK'
#!/bin/sh
[ -n "${{RALPH_PROMPT_FILE:-}}" ] || touch {ralph_ran}
setsid sleep {marker} </dev/null >/dev/null 2>&1 &
exit 0
HOOK
chmod +x "$common/hooks/reference-transaction"
honest
git add -A && git commit -qm sneaky
echo '- a note' >> AGENTS.md
""",
    )
    try:
        result = project.ralph("run", "--once", check_code=1)
        no_traceback(result)
        assert wait_gone(marker) == []
        assert not ralph_ran.exists()
        assert rolled_back(project) == {"mul": "git_tampered"}
        assert not (project.root / ".git" / "hooks" / "reference-transaction").exists()
        assert project.task_commits() == []
    finally:
        kill_marked(marker)


def test_nested_repository_is_refused_and_its_files_kept(project: Project) -> None:
    """A nested repository never lands as a gitlink a clone can't check out, and when the
    attempt fails its files are kept with the attempt, not reduced to a commit id."""
    calc_project(
        project,
        """
mkdir mathext && cd mathext && git init -q
printf 'def mul(a, b):\\n    return a * b\\n' > __init__.py
git add -A && git commit -qm ext && cd ..
printf 'from mathext import mul\\n' >> calc.py
""",
    )
    result = project.ralph("run", "--once", check_code=1)
    no_traceback(result)
    assert rolled_back(project) == {"mul": "nested_repo"}
    assert " 160000 " not in " " + project.git("ls-tree", "-r", "main")
    (kept,) = (project.root / ".ralph" / "attempts" / "mul").rglob("nested-repositories.tar")
    listing = subprocess.run(
        ["tar", "-tf", str(kept)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "mathext/__init__.py" in listing
    assert any(name.startswith("mathext/.git/") for name in listing)


# --- 7-9: records, processes and the index after a kill -------------------------------------


def test_forged_attempt_record_never_rewinds_the_branch(project: Project) -> None:
    """An attempt record the agent forges (start commit = the root commit, checksum and
    all, and an older ralph's current.json) before killing ralph makes recovery move the
    branch nowhere: no commit is lost."""
    forge = forge_record('"$records/workers/0.json"', '"$root"')
    calc_project(
        project,
        f"""
case "$RALPH_TASK_ID" in
mul) honest ;;
later)
  echo later > later.txt
  [ "$RALPH_ATTEMPT" = 1 ] || exit 0
  root=$(git rev-list --max-parents=0 HEAD)
  {forge}
  printf '{{"task_id": "later", "attempt": 1, "start_commit": "%s", "branch": "main", ' "$root" \\
    > "$dot_ralph/current.json"
  printf '"attempt_dir": "%s"}}' "$attempt_dir" >> "$dot_ralph/current.json"
  kill -9 "$PPID"; sleep 30 ;;
esac
""",
    )
    project.ralph("run", "--once", check_code=0)
    project.spec("later", "# Later\n\nWrite later.txt.\n", priority=2, max_attempts=2)
    users = project.commit("a later task")
    killed = project.ralph("run", "--once")
    assert killed.returncode == -9, killed.stderr[-2000:]
    record = project.current_attempt()
    root = project.git("rev-list", "--max-parents=0", "HEAD").strip()
    assert record is not None and record["start_commit"] == root  # the forgery took
    result = project.ralph("run", "--once")
    no_traceback(result)
    assert project.git("merge-base", "--is-ancestor", users, "main") == ""
    assert [task for task, _ in project.task_commits()].count("mul") == 1
    assert project.current_attempt() is None


def test_forged_older_ralphs_record_never_touches_the_users_work(project: Project) -> None:
    """An older ralph's attempt record (.ralph/current.json) planted by the agent makes the
    next start neither reset nor move aside a person's uncommitted edit: it stops with
    exit 2, naming the file, and the edit is still there."""
    calc_project(
        project,
        """
honest
printf '{"task_id": "mul", "attempt": 1, "start_commit": "%s", "branch": "main", ' \\
  "$(git rev-parse HEAD)" > "$dot_ralph/current.json"
printf '"attempt_dir": "%s"}' "$attempt_dir" >> "$dot_ralph/current.json"
""",
    )
    project.ralph("run", "--once", check_code=0)
    project.write("README.md", "my edit, not committed yet\n")
    result = project.ralph("run", "--once")
    no_traceback(result)
    assert (project.root / "README.md").read_text() == "my edit, not committed yet\n"
    assert result.returncode == 2 and "README.md" in result.stderr, result.stderr[-2000:]


def test_escaped_daemon_is_stopped_after_ralph_is_killed(project: Project) -> None:
    """A daemon started with setsid and an empty environment, still writing in the worktree,
    is stopped when ralph starts again after a SIGKILL, and the restart goes on."""
    marker = f"ralph-escaped-{uniq()}"
    calc_project(
        project,
        f"""
if [ "$RALPH_ATTEMPT" = 1 ]; then
  setsid env -i /bin/sh -c 'while :; do echo x >> daemon-out.txt; sleep 0.1; done' {marker} \\
    </dev/null >/dev/null 2>&1 &
  sleep 60
fi
honest
""",
        max_attempts=2,
    )
    proc = project.popen("run", "--once")
    try:
        wait_for(lambda: marker_processes(marker), 20, "the daemon")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert marker_processes(marker), "the daemon should outlive a SIGKILLed ralph"
        result = project.ralph("run", "--once")
        no_traceback(result)
        assert result.returncode == 0, result.stderr[-2000:]
        assert wait_gone(marker) == []
        assert project.task_commits() == [("mul", "2")]
        assert "daemon-out.txt" not in project.git("show", "--name-only", "HEAD")
    finally:
        proc.kill()
        kill_marked(marker)


@pytest.mark.parametrize("index", ["worktree", "users"])
def test_corrupt_index_is_never_a_crash(project: Project, index: str) -> None:
    """Random bytes written over an index (the worktree's or the user's) end in a verdict or
    a message, never a traceback, and leave no attempt on record to crash a restart."""
    where = '"$gitdir/index"' if index == "worktree" else '"$common/index"'
    calc_project(project, f"honest\nhead -c 300 /dev/urandom > {where}\n")
    first = project.ralph("run", "--once")
    again = project.ralph("run", "--once")
    status = project.ralph("status")
    no_traceback(first, again, status)
    assert {first.returncode, again.returncode} <= {0, 1, 2}
    assert project.current_attempt() is None
    if index == "worktree":
        assert first.returncode == 0 and project.task_commits() == [("mul", "1")]


# --- 10-11: names and YAML ----------------------------------------------------------------


@pytest.mark.parametrize("front", ["", "---\nid: cafe\n---\n"], ids=["reported", "run"])
def test_spec_name_that_is_not_utf8_never_crashes_the_event_log(
    project: Project, front: str
) -> None:
    """A spec whose file name is not UTF-8 is reported (no id from that name) or run (an id
    in its front matter), and every event stays a line of valid UTF-8 JSON."""
    name = os.path.join(os.fsencode(project.root / "specs"), b"caf\xe9.md")
    with open(name, "wb") as handle:
        handle.write(front.encode() + "# Café\n\nWrite cafe.txt.\n".encode())
    project.spec("plain")
    for task in ("cafe", "plain"):
        project.attempts(task, {"steps": [{"write": f"{task}.txt", "content": "ok\n"}]})
    project.commit()
    result = project.ralph("run", "--once")
    no_traceback(result)
    raw = (project.root / ".ralph" / "events.jsonl").read_bytes()
    events = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    if front:
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(project.task_commits()) == [("cafe", "1"), ("plain", "1")]
    else:
        assert result.returncode == 1, result.stderr[-2000:]
        assert project.task_commits() == [("plain", "1")]
        invalid = [event for event in events if event["event"] == "spec_invalid"]
        assert invalid and "caf" in invalid[0]["path"]
    for args in (["status"], ["status", "--json"], ["validate"]):
        shown = subprocess.run(
            [sys.executable, "-m", "ralph", "-C", str(project.root), *args], capture_output=True
        )
        assert b"Traceback" not in shown.stderr and shown.returncode in (0, 1), shown.stderr


def test_yaml_alias_bomb_is_refused_at_once(project: Project) -> None:
    """A spec of a few hundred bytes whose YAML aliases expand to billions of items is
    refused, naming the file, in well under a second of work and little memory."""
    levels = "abcdefghi"
    lines = ["---", "depends_on:", f"  - &{levels[0]} [x, x, x, x, x, x, x, x, x]"]
    for previous, name in zip(levels, levels[1:], strict=False):
        lines.append(f"  - &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = "\n".join([*lines, "---", "# Bomb", ""])
    assert len(bomb) < 600
    project.write("specs/bomb.md", bomb)
    project.spec("good")
    project.commit()
    status = measured(project, "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr[-2000:]
    tasks = {task["id"]: task for task in json.loads(status.stdout)["tasks"]}
    assert tasks["bomb"]["state"] == "invalid"
    assert "specs/bomb.md" in tasks["bomb"]["reason"]
    assert "alias" in tasks["bomb"]["reason"] or "anchor" in tasks["bomb"]["reason"]
    assert len(tasks["bomb"]["reason"]) < 1000
    assert tasks["good"]["state"] == "pending"
    assert status.seconds < 15 and status.peak_kib < 300 * 1024, status


# --- 12-13: the lock and the state file ----------------------------------------------------


def test_deleted_lock_lets_no_second_ralph_in(project: Project) -> None:
    """With the lock file deleted by the agent, a second ralph still exits 75 at once and
    the first one's commit stays."""
    sync = project.root.parent
    calc_project(
        project,
        f"""
rm -f "$dot_ralph/lock"
touch {sync}/lock-removed
n=0; while [ ! -e {sync}/go ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done
honest
""",
    )
    first = project.popen("run", "--once")
    try:
        wait_for(lambda: (sync / "lock-removed").exists(), 20, "the agent")
        started = time.monotonic()
        second = project.ralph("run", "--once", timeout=30)
        assert second.returncode == 75, second.stderr[-2000:]
        assert time.monotonic() - started < 10
        (sync / "go").touch()
        _out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err[-2000:]
    finally:
        first.kill()
    assert project.task_commits() == [("mul", "1")]
    assert project.current_attempt() is None


def test_overwritten_state_file_is_set_aside_not_a_crash(project: Project) -> None:
    """A state file the agent overwrites with a foreign shape is set aside with a warning;
    the attempt, the restart and `ralph status` go on."""
    calc_project(
        project,
        """
honest
echo '{"version":1,"tasks":[]}' > "$records/state.json"
echo '{"version":1,"tasks":[]}' > "$dot_ralph/state.json"
""",
    )
    try:
        result = project.ralph("run", "--once", timeout=30)
        again = project.ralph("run", "--once", timeout=30)
        status = project.ralph("status", timeout=30)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(f"ralph hung: {hung.stderr!r}"[-2000:]) from None
    no_traceback(result, again, status)
    assert result.returncode == 0, result.stderr[-2000:]
    assert again.returncode == 0 and status.returncode == 0
    assert project.task_commits() == [("mul", "1")]
    assert "ralph.record_set_aside" in result.stderr
    assert project.current_attempt() is None


# --- 14-17: bounded input, symlinks, big files, a stopped ralph ------------------------------


def test_absurd_events_are_read_within_bounds(project: Project) -> None:
    """Events with timestamps in years 1 and 9999, durations of 1e308 and absurd counts
    give `ralph stats` and `ralph report` finite numbers in seconds, small memory and a
    small page."""
    absurd = [
        {"ts": "0001-01-01T00:00:00+00:00", "event": "task_done", "task": "old", "attempts": 1},
        {"ts": "9999-12-31T23:59:59+00:00", "event": "task_done", "task": "new", "attempts": 1},
        {"ts": "9999-12-31T23:59:59+00:00", "event": "task_failed", "task": "bad"},
        {
            "ts": "2024-01-01T00:00:00+00:00",
            "event": "agent_exited",
            "task": "old",
            "duration_s": 1e308,
            "cost_usd": 1e308,
            "input_tokens": 10**40,
            "output_tokens": -(10**40),
        },
        {"event": "check_finished", "task": "old", "duration_s": 1e308, "passed": True},
        {"event": "attempt_started", "task": "old", "attempt": 10**30},
    ]
    lines = "\n".join(json.dumps({"schema": 1, **event}) for event in absurd)
    lines += '\n{"schema": 1, "event": "agent_exited", "task": "nan", "duration_s": NaN, '
    lines += '"cost_usd": Infinity}\n'
    events_file = project.root.parent / "absurd.jsonl"
    events_file.write_text(lines)
    calc_project(project, f'honest\ncat {events_file} >> "$dot_ralph/events.jsonl"\n')
    project.ralph("run", "--once", check_code=0)
    stats = measured(project, "stats", "--json", timeout=60)
    assert stats.returncode == 0, stats.stderr[-2000:]

    def finite_only(constant: str) -> None:
        raise AssertionError(f"{constant} in ralph stats --json")

    document = json.loads(stats.stdout, parse_constant=finite_only)
    overall = document["overall"]
    assert 0 <= overall["agent_seconds"] < 1e12 and 0 <= overall["check_seconds"] < 1e12
    assert overall["cost_usd"] is None or 0 <= overall["cost_usd"] < 1e12
    assert len(document["days"]) <= 10_000
    assert stats.seconds < 15 and stats.peak_kib < 300 * 1024, stats
    text = measured(project, "stats", timeout=60)
    assert text.returncode == 0, text.stderr[-2000:]
    report = measured(project, "report", timeout=60)
    assert report.returncode == 0, report.stderr[-2000:]
    page = project.root / ".ralph" / "report.html"
    assert page.stat().st_size < 2 * 1024 * 1024
    assert report.seconds < 15 and report.peak_kib < 300 * 1024, report


@pytest.mark.parametrize(
    ("planted", "link"),
    [
        ("check-1.log", "ln -s"),
        ("check-2.log", "ln"),
        ("changes.diff", "ln -s"),
        ("changes.diff.part", "ln -s"),
        ("events.jsonl", "ln -s"),
    ],
    ids=["check-log-symlink", "check-log-hardlink", "diff", "diff-part", "event-log"],
)
def test_links_planted_where_ralph_writes_are_not_followed(
    project: Project, planted: str, link: str
) -> None:
    """A symlink or hard link the agent plants where ralph writes (its check logs, its kept
    diff, the event log) is moved aside: ralph writes files of its own, never through it."""
    victim = project.root.parent / "victim"
    victim.write_text("precious\n")
    folder = '"$dot_ralph"' if planted == "events.jsonl" else '"$attempt_dir"'
    calc_project(
        project,
        f"""
printf 'def add(a, b):\\n    return a - b\\n' > calc.py
honest
rm -f {folder}/{planted}
{link} {victim} {folder}/{planted}
""",
    )
    project.configure(checks=["echo first check", CHECK])
    project.commit("two checks")
    result = project.ralph("run", "--once")
    no_traceback(result)
    assert victim.read_text() == "precious\n"
    assert result.returncode == 1, result.stderr[-2000:]
    assert rolled_back(project) == {"mul": "check_failed"}
    (attempt,) = (project.root / ".ralph" / "attempts" / "mul").iterdir()
    for name in ("check-1.log", "check-2.log", "changes.diff"):
        assert not (attempt / name).is_symlink() and (attempt / name).stat().st_nlink == 1
    assert "first check" in (attempt / "check-1.log").read_text()
    assert "FAIL" in (attempt / "check-2.log").read_text()
    assert "def mul" in (attempt / "changes.diff").read_text()


def test_large_file_in_a_failed_attempt_is_streamed(project: Project) -> None:
    """A large random file in a failed attempt is kept in the diff without ralph holding
    it in memory: its peak stays flat whatever the file's size."""
    size_mib = 32
    calc_project(
        project,
        f"""
head -c {size_mib}M /dev/urandom > big.bin
printf 'def add(a, b):\\n    return a - b\\n' > calc.py
""",
    )
    proc = project.popen("run", "--once")
    peak_kib, seconds = peak_while_running(proc, timeout=100)
    _out, err = proc.communicate()
    assert proc.returncode == 1, err[-2000:]
    assert rolled_back(project) == {"mul": "check_failed"}
    (diff,) = (project.root / ".ralph" / "attempts" / "mul").rglob("changes.diff")
    assert diff.stat().st_size > size_mib * 1024 * 1024  # base85 of the whole file
    assert peak_kib < 100 * 1024, f"ralph peaked at {peak_kib} KiB for a {size_mib} MiB file"
    assert seconds < 60


def test_stopped_ralph_does_not_blame_a_finished_agent(project: Project) -> None:
    """ralph stopped (SIGSTOP) past the attempt timeout while its agent finished in time
    judges the agent's work, not a timeout."""
    started = project.root.parent / "agent-started"
    calc_project(project, f"touch {started}\nsleep 1\nhonest\n", attempt_timeout="3s")
    proc = project.popen("run", "--once")
    try:
        wait_for(started.exists, 20, "the agent")
        proc.send_signal(signal.SIGSTOP)
        time.sleep(5)
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert rolled_back(project) == {}
    assert project.task_commits() == [("mul", "1")]


# --- a re-spawning chain of orphans ---------------------------------------------------------

CHAIN = """\
#!/bin/sh
# $1: marker, $2: generation, $3: a file each generation writes its number to.
[ "$2" -gt 1500 ] && exit 0
echo "$2" >> "$3"
sleep 0.05
setsid env -i /bin/sh "$0" "$1" $(($2 + 1)) "$3" </dev/null >/dev/null 2>&1 &
exit 0
"""


def _cgroup2_mounts() -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            mounts.append(left.split(" ")[4])
    return mounts


def ralph_argv(project: Project, tracking: str, *args: str) -> list[str]:
    """``ralph ARGS``; with ``tracking="no-cgroups"`` and where the test runs as root, the
    cgroup hierarchy is hidden from it (a tmpfs over it in a private mount namespace), so
    it tracks processes by group, tree and sampling alone. Elsewhere ralph runs as it would."""
    argv = [sys.executable, "-m", "ralph", "-C", str(project.root), "--log-format", "json", *args]
    mounts = _cgroup2_mounts()
    if tracking == "no-cgroups" and mounts and os.geteuid() == 0 and shutil.which("unshare"):
        hide = " && ".join(f"mount -t tmpfs none {shq(mount)}" for mount in mounts)
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                f'{hide} && exec "$@"', "ralph", *argv]  # fmt: skip
    return argv


def chain_project(project: Project, then: str) -> tuple[str, Path]:
    marker = f"ralph-chain-{uniq()}"
    chain, generations = project.root.parent / "chain.sh", project.root.parent / "generations"
    chain.write_text(CHAIN)
    calc_project(
        project,
        f"""
if [ "$RALPH_ATTEMPT" = 1 ]; then
  setsid env -i /bin/sh {chain} {marker} 1 {generations} </dev/null >/dev/null 2>&1 &
  sleep 1.5
  {then}
fi
honest
""",
        max_attempts=2,
    )
    return marker, generations


def popen_env() -> Mapping[str, str]:
    return {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}


@pytest.fixture(params=["as-started", "no-cgroups"])
def tracking(request: pytest.FixtureRequest) -> Iterator[str]:
    """How ralph finds an attempt's processes: as it starts here (a cgroup where it may
    make one), or without cgroups (process group, tree and sampling)."""
    yield str(request.param)


def test_respawning_chain_does_not_outlive_its_attempt(project: Project, tracking: str) -> None:
    """A chain of processes that each fork the next and exit (every generation an orphan,
    in its own session, with an empty environment) is gone when the attempt ends."""
    marker, generations = chain_project(project, "")
    try:
        result = subprocess.run(
            ralph_argv(project, tracking, "run", "--once"),
            capture_output=True,
            text=True,
            timeout=60,
            env=popen_env(),
        )
        no_traceback(result)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(generations.read_text().split()) > 5  # the chain did run
        assert seen_within(marker, 1.0) == []
    finally:
        kill_marked(marker)


def test_respawning_chain_does_not_survive_a_killed_ralph(project: Project) -> None:
    """The same chain, with ralph SIGKILLed mid-attempt: started again, ralph stops every
    process of it before it goes on (it is in the attempt's cgroup). Without cgroups, a chain
    that re-spawns faster than ralph samples and leaves the tree can outlive a SIGKILLed
    ralph: docs/safety.md says so, and how to get cgroups."""
    if not _cgroup2_mounts() or os.geteuid() != 0:
        pytest.skip("needs a cgroup v2 ralph may write to (root, or systemd Delegate=yes)")
    tracking = "as-started"
    marker, generations = chain_project(project, "sleep 60")
    proc = subprocess.Popen(
        ralph_argv(project, tracking, "run", "--once"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=popen_env(),
    )
    try:
        wait_for(lambda: generations.exists() and len(generations.read_text().split()) > 5,
                 20, "the chain")  # fmt: skip
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert seen_within(marker, 1.0), "the chain should outlive a SIGKILLed ralph"
        result = subprocess.run(
            ralph_argv(project, tracking, "run", "--once"),
            capture_output=True,
            text=True,
            timeout=60,
            env=popen_env(),
        )
        no_traceback(result)
        assert result.returncode == 0, result.stderr[-2000:]
        assert seen_within(marker, 1.0) == []
        assert project.task_commits() == [("mul", "2")]
    finally:
        proc.kill()
        kill_marked(marker)
