"""One attempt, end to end: the agent, the gate, the commit or the rollback."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import Project, to_toml


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file outside .git and .ralph with a hash of its bytes and its mode."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in (".git", ".ralph") or not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        snapshot[relative.as_posix()] = f"{digest}:{oct(path.stat().st_mode)}"
    return snapshot


def latest_attempt_dir(project: Project, task_id: str) -> Path:
    return sorted((project.root / ".ralph" / "attempts" / task_id).iterdir())[-1]


def test_passing_attempt_makes_one_commit_with_trailers(project: Project) -> None:
    """A passing attempt becomes exactly one commit titled after the task, with both trailers."""
    project.spec("greet", "# Add a greeting\n\nWrite greet.txt.\n")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hello\n"}]})
    project.configure(checks=["test -f greet.txt"])
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert project.subjects()[-1] == "Add a greeting"
    assert project.task_commits() == [("greet", "1")]
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["greet.txt"]
    assert project.git("status", "--porcelain") == ""
    assert project.status_json()["greet"]["state"] == "done"


def test_done_lives_in_git_history(project: Project) -> None:
    """Deleting .ralph/ doesn't make a committed task pending again."""
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "greet.txt", "content": "hello\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    shutil.rmtree(project.root / ".ralph")
    assert project.status_json()["greet"]["state"] == "done"
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("greet", "1")]


def test_failed_task_leaves_the_tree_exactly_as_it_was(project: Project) -> None:
    """A task that fails every attempt leaves the user's tracked, untracked and ignored files
    as before."""
    project.write(".gitignore", "build/\n")
    project.write("keep.txt", "original\n")
    project.write("gone.txt", "will be deleted by the agent\n")
    project.spec("break")
    project.configure(checks=["false"], max_attempts=2)
    project.commit()
    project.write("build/cache.bin", b"\x00ignored")
    before = tree_snapshot(project.root)
    project.attempts(
        "break",
        {
            "steps": [
                {"write": "keep.txt", "content": "changed\n"},
                {"delete": "gone.txt"},
                {"write": "new/untracked.txt", "content": "new\n"},
                {"chmod": "keep.txt", "mode": "755"},
                {"write": "build/cache.bin", "content": "agent touched ignored file"},
            ]
        },
    )
    head = project.head()
    project.ralph("run", "--once", check_code=1)
    # The only commits are learnings (the failure's own lesson), touching only AGENTS.md.
    changed = project.git("diff", "--name-only", head, "HEAD").split()
    assert changed == ["AGENTS.md"]
    assert "failed 2 attempts; check `false` failed in 2" in project.git("show", "HEAD")
    after = tree_snapshot(project.root)
    # The agent works in a worktree of ralph's: nothing in the user's tree was touched, their
    # ignored files included; only AGENTS.md moved on with the lesson's commit.
    assert after.pop("AGENTS.md") != before.pop("AGENTS.md")
    assert after == before
    task = project.status_json()["break"]
    assert (task["state"], task["attempts"]) == ("failed", 2)
    diff = (latest_attempt_dir(project, "break") / "changes.diff").read_text()
    assert "new/untracked.txt" in diff and "gone.txt" in diff


def test_retry_prompt_carries_the_failing_check_and_its_output(project: Project) -> None:
    """The second attempt's prompt names the failing check and ends with its output."""
    project.spec("fix")
    project.configure(
        checks=[
            "echo out-of-$(cat answer.txt 2>/dev/null || echo nothing) && grep -qx 42 answer.txt"
        ]
    )
    project.commit()
    project.attempts(
        "fix",
        {"steps": [{"write": "answer.txt", "content": "41\n"}]},
        {
            "steps": [
                {"expect_in_prompt": "out-of-41"},
                {"expect_in_prompt": "grep -qx 42 answer.txt"},
                {"write": "answer.txt", "content": "42\n"},
            ]
        },
    )
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("fix", "2")]
    prompt = (latest_attempt_dir(project, "fix") / "prompt.md").read_text()
    assert "Why the previous attempt failed" in prompt
    assert "failed with exit code 1" in prompt


def test_prompt_holds_spec_memory_and_rules(project: Project) -> None:
    """The prompt carries the spec body, the memory file and the rules about protected paths."""
    project.write("AGENTS.md", "# Agents\n\nAlways use tabs-not-spaces-marker.\n")
    project.spec("task", "# Do the thing\n\nUnique-spec-body-marker.\n")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    prompt = (latest_attempt_dir(project, "task") / "prompt.md").read_text()
    for needle in (
        "Unique-spec-body-marker",
        "tabs-not-spaces-marker",
        "specs/**",
        "ralph.toml",
        "RALPH_LEARNINGS_FILE",
        "Do not commit",
    ):
        assert needle in prompt
    assert "Change only paths matching" not in prompt  # the spec declares no touches


def test_prompt_names_the_touches_the_task_promised(project: Project) -> None:
    project.spec("task", touches=["src/billing/**", "tests/billing/**"])
    project.attempts("task", {"steps": [{"write": "src/billing/x.py", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    prompt = (latest_attempt_dir(project, "task") / "prompt.md").read_text()
    assert "Change only paths matching `src/billing/**`, `tests/billing/**`" in prompt


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("specs/task.md", "# rewritten spec\n"),
        ("ralph.toml", 'checks = ["true"]\n'),
        ("AGENTS.md", "# Agents\n\nI was here.\n"),
        ("secrets/key.txt", "mine\n"),
    ],
)
def test_change_to_protected_path_fails_the_attempt(
    project: Project, path: str, content: str
) -> None:
    """Touching a spec, ralph.toml, the memory file or a `protected` glob fails the attempt."""
    project.spec("task")
    project.configure(protected=["secrets/**"], max_attempts=1)
    project.commit()
    project.attempts(
        "task",
        {"steps": [{"write": "ok.txt", "content": "fine\n"}, {"write": path, "content": content}]},
    )
    project.ralph("run", "--once", check_code=1)
    assert project.task_commits() == []
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert rolled[0]["reason"] == "protected" and path in rolled[0]["summary"]
    assert project.git("status", "--porcelain") == ""


@pytest.mark.parametrize(
    ("steps", "passes"),
    [
        ([{"write": "tests/test_new.py", "content": "new\n"}], True),
        ([{"write": "tests/test_old.py", "content": "weakened\n"}], False),
        ([{"delete": "tests/test_old.py"}], False),
        ([{"rename": "tests/test_old.py", "to": "tests/test_renamed.py"}], False),
    ],
)
def test_append_only_paths_accept_new_files_only(
    project: Project, steps: list[dict[str, str]], passes: bool
) -> None:
    """In append_only globs the agent may add files but not change, delete or rename them."""
    project.write("tests/test_old.py", "assert True\n")
    project.spec("task")
    project.configure(append_only=["tests/**"], max_attempts=1)
    project.commit()
    project.attempts("task", {"steps": steps})
    project.ralph("run", "--once", check_code=0 if passes else 1)
    assert project.task_commits() == ([("task", "1")] if passes else [])


@pytest.mark.parametrize("allow_empty", [False, True])
def test_no_changes_fails_unless_allowed(project: Project, allow_empty: bool) -> None:
    """An agent that exits 0 having changed nothing fails, unless the spec says allow_empty."""
    project.spec("noop", allow_empty=allow_empty, max_attempts=1)
    project.attempts("noop", {"steps": []})
    project.commit()
    project.ralph("run", "--once", check_code=0 if allow_empty else 1)
    reasons = [e["reason"] for e in project.events() if e["event"] == "rolled_back"]
    assert reasons == ([] if allow_empty else ["no_changes"])


def test_agent_commit_is_folded_back_into_one_ralph_commit(project: Project) -> None:
    """An agent that commits on its own has HEAD brought back; ralph makes the only commit."""
    project.spec("sneaky")
    project.attempts(
        "sneaky",
        {
            "steps": [
                {"write": "a.txt", "content": "a\n"},
                {
                    "run": "git add -A && git commit -qm 'agent commit' && git tag agent-tag",
                    "check": True,
                },
                {"write": "b.txt", "content": "b\n"},
            ]
        },
    )
    start = project.commit()
    project.ralph("run", "--once", check_code=0)
    assert project.git("rev-parse", "HEAD~1").strip() == start
    assert sorted(project.git("show", "--name-only", "--format=", "HEAD").split()) == [
        "a.txt",
        "b.txt",
    ]
    assert "agent commit" not in project.subjects()


def test_agent_nonzero_exit_fails_the_attempt(project: Project) -> None:
    """An agent that exits non-zero fails the attempt even if the checks would pass."""
    project.spec("crash", max_attempts=1)
    project.attempts("crash", {"steps": [{"write": "x.txt", "content": "x\n"}], "exit": 3})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert rolled[0]["reason"] == "crash" and "code 3" in rolled[0]["summary"]


def test_checks_run_in_root_in_order_and_spec_checks_after_global(project: Project) -> None:
    """Global checks run first, then the spec's own, each from the root of ralph's checkout."""
    log = project.root.parent / "checks.log"
    project.spec("task", checks=[f"echo spec-$(pwd) >> {log}"])
    project.configure(checks=[f"echo global-$(pwd) >> {log}"])
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    checkout = project.root / ".ralph" / "worktrees" / "w0"
    assert log.read_text().split() == [f"global-{checkout}", f"spec-{checkout}"]


def test_check_timeout_fails_the_attempt(project: Project) -> None:
    """A check that runs past check_timeout is stopped and fails the attempt."""
    project.spec("slow", max_attempts=1)
    project.configure(checks=["sleep 30"], check_timeout="1s", kill_grace="0.5s")
    project.attempts("slow", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=1, timeout=20)
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert "did not finish within the check timeout" in rolled[0]["summary"]


def test_missing_check_command_is_a_clear_failure(project: Project) -> None:
    """A check command that doesn't exist fails the attempt with 'command not found'."""
    project.spec("task", max_attempts=1)
    project.configure(checks=["no-such-check-command-xyz"])
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=1)
    rolled = [e for e in project.events() if e["event"] == "rolled_back"]
    assert "command not found" in rolled[0]["summary"]


def test_files_made_by_checks_are_not_committed(project: Project) -> None:
    """The commit holds the agent's change, not what the checks left behind."""
    project.spec("task")
    project.configure(checks=["echo junk > check-artifact.txt"])
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["x.txt"]
    assert not (project.root / "check-artifact.txt").exists()


def test_repository_hooks_do_not_run_on_ralph_commits(project: Project) -> None:
    """A pre-commit hook in the repository is not executed when ralph commits (run_hooks off)."""
    marker = project.root.parent / "hook-ran"
    hook = project.root / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    hook.chmod(0o755)
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.write("ralph.toml", to_toml(project.settings))
    project.git("add", "-A")
    project.git("commit", "-q", "--no-verify", "-m", "setup")  # our own hook would refuse it
    project.ralph("run", "--once", check_code=0)
    assert not marker.exists()
    assert project.task_commits() == [("task", "1")]


def test_learnings_go_into_the_task_commit(project: Project) -> None:
    """Learnings of a passing attempt land under ## Learnings in the task's own commit."""
    project.spec("task")
    project.attempts(
        "task",
        {"steps": [{"write": "x.txt", "content": "x\n"}, {"learn": "Use the x helper"}]},
    )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    files = sorted(project.git("show", "--name-only", "--format=", "HEAD").split())
    assert files == ["AGENTS.md", "x.txt"]
    memory = (project.root / "AGENTS.md").read_text()
    assert "Human notes." in memory
    assert "## Learnings" in memory and "- [task · " in memory and "] Use the x helper" in memory


def test_learnings_of_a_failed_attempt_get_their_own_commit(project: Project) -> None:
    """A failed attempt's learnings are committed alone, touching only the memory file."""
    project.spec("task", max_attempts=1)
    project.configure(checks=["false"])
    project.attempts(
        "task",
        {"steps": [{"write": "x.txt", "content": "x\n"}, {"learn": "The check is always false"}]},
    )
    project.commit()
    project.ralph("run", "--once", check_code=1)
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["AGENTS.md"]
    assert "Ralph-Learnings: task" in project.git("log", "-1", "--format=%B")
    assert project.task_commits() == []
    assert "The check is always false" in (project.root / "AGENTS.md").read_text()


def test_learnings_are_deduplicated_across_tasks(project: Project) -> None:
    """The same lesson from two tasks is recorded once."""
    for name in ("one", "two"):
        project.spec(name)
        project.attempts(
            name,
            {
                "steps": [
                    {"write": f"{name}.txt", "content": "x\n"},
                    {"learn": "Run make fmt first."},
                ]
            },
        )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    assert (project.root / "AGENTS.md").read_text().count("Run make fmt first") == 1


def test_events_record_every_step_of_an_attempt(project: Project) -> None:
    """events.jsonl holds timestamped events for each step, all from one run."""
    project.spec("task")
    project.attempts("task", {"steps": [{"write": "x.txt", "content": "x\n"}, {"learn": "L1"}]})
    project.commit()
    project.ralph("run", "--once", check_code=0)
    events = project.events()
    names = [e["event"] for e in events]
    for expected in (
        "run_started",
        "task_started",
        "attempt_started",
        "agent_exited",
        "check_finished",
        "learning_added",
        "committed",
        "task_done",
        "run_finished",
    ):
        assert expected in names
    assert len({e["run_id"] for e in events}) == 1
    assert all("ts" in e for e in events)
    json.dumps(events)  # every event is plain JSON


def test_uncommitted_spec_is_run_and_left_uncommitted(project: Project) -> None:
    """A spec the user hasn't committed is worked on, and stays theirs: uncommitted, unchanged."""
    project.attempts("new", {"steps": [{"write": "x.txt", "content": "x\n"}]})
    project.commit()
    spec = project.spec("new")
    text = spec.read_text()
    project.ralph("run", "--once", check_code=0)
    assert project.task_commits() == [("new", "1")]
    assert project.git("show", "--name-only", "--format=", "HEAD").split() == ["x.txt"]
    assert spec.read_text() == text
    assert project.git("status", "--porcelain", "-uall").strip() == "?? specs/new.md"


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([{"write": "x.txt", "content": "x\n"}], "check_failed"),
        (
            [{"write": "x.txt", "content": "x\n"}, {"append": "specs/new.md", "content": "more"}],
            "protected",
        ),
    ],
    ids=["failing-check", "agent-edits-it"],
)
def test_rollback_never_loses_an_uncommitted_spec(
    project: Project, steps: list[dict[str, str]], reason: str
) -> None:
    """However an attempt fails, the user's uncommitted spec comes back byte for byte."""
    project.configure(checks=["test ! -f x.txt || false"] if reason == "check_failed" else ["true"])
    project.attempts("new", {"steps": steps})
    project.commit()
    spec = project.spec("new", max_attempts=1)
    text = spec.read_bytes()
    project.ralph("run", "--once", check_code=1)
    assert [e["reason"] for e in project.events() if e["event"] == "rolled_back"] == [reason]
    assert spec.read_bytes() == text
    assert project.task_commits() == []


def test_an_uncommitted_spec_is_out_of_the_agents_reach(project: Project) -> None:
    """The user's uncommitted spec isn't in the agent's worktree: deleting it there does
    nothing to the user's file, and the task is done with the spec still uncommitted."""
    project.attempts(
        "new",
        {"steps": [{"write": "x.txt", "content": "x\n"}, {"run": "rm -f specs/new.md"}]},
    )
    project.commit()
    spec = project.spec("new", max_attempts=1)
    text = spec.read_bytes()
    project.ralph("run", "--once", check_code=0)
    assert spec.read_bytes() == text
    assert project.task_commits() == [("new", "1")]
    assert project.git("status", "--porcelain", "--untracked-files=all") == "?? specs/new.md\n"


def test_uncommitted_change_outside_specs_stops_a_batch(project: Project) -> None:
    """Uncommitted work outside specs/ stops `run --once` with exit 2 naming it."""
    project.spec("task")
    project.commit()
    project.write("README.md", "edited by a person\n")
    result = project.ralph("run", "--once", check_code=2)
    assert "README.md" in result.stderr
    assert (project.root / "README.md").read_text() == "edited by a person\n"
