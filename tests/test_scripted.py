"""The scripted agent, run as a real subprocess the way ralph runs it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ralph.scripted import ScriptError, attempt_steps

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, task: str | None, attempt: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RALPH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["RALPH_PROMPT_FILE"] = str(tmp_path / "prompt.md")
    env["RALPH_LEARNINGS_FILE"] = str(tmp_path / "learnings.md")
    if task is not None:
        env["RALPH_TASK_ID"] = task
    if attempt is not None:
        env["RALPH_ATTEMPT"] = attempt
    return env


def _command(tmp_path: Path, script: str | None) -> list[str]:
    """Write the script (None: leave it missing) and return the command that runs the agent."""
    script_path = tmp_path / "script.toml"
    if script is not None:
        script_path.write_text(textwrap.dedent(script), encoding="utf-8")
    (tmp_path / "repo").mkdir(exist_ok=True)
    return [sys.executable, "-m", "ralph.scripted", str(script_path)]


def run_agent(
    tmp_path: Path,
    script: str | None,
    task: str | None = "greet",
    attempt: str | None = "1",
    prompt: str = "Implement greet.\n",
) -> subprocess.CompletedProcess[str]:
    """Run the agent on `script` in tmp_path/repo, with the prompt and learnings in tmp_path."""
    (tmp_path / "prompt.md").write_text(prompt, encoding="utf-8")
    return subprocess.run(
        _command(tmp_path, script),
        cwd=tmp_path / "repo",
        env=_env(tmp_path, task, attempt),
        capture_output=True,
        text=True,
        timeout=30,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file under root, by relative path, with its text."""
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


THREE_ATTEMPTS = """
    [[tasks.greet.attempts]]
    steps = [{ print = "first" }]
    exit = 1
    [[tasks.greet.attempts]]
    steps = [{ print = "second" }]
    exit = 2
"""


@pytest.mark.parametrize(
    ("attempt", "said", "code"),
    [("1", "first", 1), ("2", "second", 2), ("3", "second", 2), ("9", "second", 2)],
)
def test_attempt_selection(tmp_path: Path, attempt: str, said: str, code: int) -> None:
    """Attempt N follows attempts[N-1], and attempts past the end reuse the last entry."""
    result = run_agent(tmp_path, THREE_ATTEMPTS, attempt=attempt)
    assert result.stdout == f"scripted agent: task greet attempt {attempt}\n{said}\n"
    assert result.returncode == code


def test_task_ids_with_slashes(tmp_path: Path) -> None:
    """A quoted task id with a slash is matched exactly."""
    script = """
        [[tasks."api/login".attempts]]
        steps = [{ print = "logging in" }]
    """
    result = run_agent(tmp_path, script, task="api/login")
    assert result.stdout.splitlines() == ["scripted agent: task api/login attempt 1", "logging in"]


@pytest.mark.parametrize(
    ("before", "steps", "after"),
    [
        pytest.param(
            {}, '{ write = "a/b/c.txt", content = "hi\\n" }', {"a/b/c.txt": "hi\n"}, id="write"
        ),
        pytest.param(
            {"f.txt": "old"}, '{ write = "f.txt", content = "new" }', {"f.txt": "new"}, id="over"
        ),
        pytest.param({}, '{ write = "empty.txt" }', {"empty.txt": ""}, id="write-empty"),
        pytest.param(
            {"f.txt": "a\n"},
            '{ append = "f.txt", content = "b\\n" }',
            {"f.txt": "a\nb\n"},
            id="app",
        ),
        pytest.param({}, '{ append = "n/f.txt", content = "x" }', {"n/f.txt": "x"}, id="app-new"),
        pytest.param(
            {"f.txt": "x", "g.txt": "y"}, '{ delete = "f.txt" }', {"g.txt": "y"}, id="del"
        ),
        pytest.param({"d/e/f.txt": "x", "g.txt": "y"}, '{ delete = "d" }', {"g.txt": "y"}, id="rm"),
        pytest.param(
            {"old.txt": "x"},
            '{ rename = "old.txt", to = "sub/new.txt" }',
            {"sub/new.txt": "x"},
            id="rename",
        ),
    ],
)
def test_file_actions(
    tmp_path: Path, before: dict[str, str], steps: str, after: dict[str, str]
) -> None:
    """write, append, delete and rename change the files under the cwd as scripted."""
    for name, text in before.items():
        path = tmp_path / "repo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    result = run_agent(tmp_path, f"[[tasks.greet.attempts]]\nsteps = [{steps}]\n")
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "repo") == after


@pytest.mark.parametrize(("mode", "bits"), [("755", 0o755), ("600", 0o600), ("0o640", 0o640)])
def test_chmod(tmp_path: Path, mode: str, bits: int) -> None:
    """chmod sets the file's permission bits from an octal string."""
    script = f"""
        [[tasks.greet.attempts]]
        steps = [{{ write = "run.sh", content = "" }}, {{ chmod = "run.sh", mode = "{mode}" }}]
    """
    assert run_agent(tmp_path, script).returncode == 0
    assert stat.S_IMODE((tmp_path / "repo" / "run.sh").stat().st_mode) == bits


def test_learn_appends_bullets(tmp_path: Path) -> None:
    """Each learn step appends one markdown bullet to the learnings file."""
    (tmp_path / "learnings.md").write_text("# Learnings\n", encoding="utf-8")
    script = """
        [[tasks.greet.attempts]]
        steps = [{ learn = "greet() lives in src/greet.py" }, { learn = "run make test" }]
    """
    assert run_agent(tmp_path, script).returncode == 0
    learnings = (tmp_path / "learnings.md").read_text(encoding="utf-8")
    assert learnings == "# Learnings\n- greet() lives in src/greet.py\n- run make test\n"


@pytest.mark.parametrize(("exit_line", "code"), [("", 0), ("exit = 0", 0), ("exit = 7", 7)])
def test_exit_code(tmp_path: Path, exit_line: str, code: int) -> None:
    """The agent exits with the attempt's exit code, 0 when none is given."""
    result = run_agent(tmp_path, f"[[tasks.greet.attempts]]\n{exit_line}\n")
    assert result.returncode == code


@pytest.mark.parametrize(
    ("run_step", "code", "went_on"),
    [
        ('{ run = "echo ran > ran.txt" }', 0, True),
        ('{ run = "echo ran > ran.txt; exit 5" }', 0, True),
        ('{ run = "echo ran > ran.txt; exit 5", check = true }', 5, False),
        ('{ run = "echo ran > ran.txt", check = true }', 0, True),
    ],
)
def test_run(tmp_path: Path, run_step: str, code: int, went_on: bool) -> None:
    """run executes a shell command in the cwd; with check, a failure ends the agent with it."""
    script = f"""
        [[tasks.greet.attempts]]
        steps = [{run_step}, {{ print = "went on" }}]
    """
    result = run_agent(tmp_path, script)
    assert result.returncode == code
    assert (tmp_path / "repo" / "ran.txt").read_text(encoding="utf-8") == "ran\n"
    assert ("went on" in result.stdout) is went_on


def test_run_in_background(tmp_path: Path) -> None:
    """A background run is left running after the agent exits."""
    command = "while [ ! -f go ]; do sleep 0.01; done; echo done > bg.txt"
    script = f"""
        [[tasks.greet.attempts]]
        steps = [{{ run = "{command}", background = true }}]
    """
    (tmp_path / "prompt.md").write_text("", encoding="utf-8")
    agent = subprocess.run(
        _command(tmp_path, script),
        cwd=tmp_path / "repo",
        env=_env(tmp_path, "greet", "1"),
        stdout=subprocess.DEVNULL,  # the background child keeps captured pipes open
        timeout=30,
    )
    assert agent.returncode == 0
    assert not (tmp_path / "repo" / "bg.txt").exists()
    (tmp_path / "repo" / "go").touch()
    deadline = time.monotonic() + 10
    while not (tmp_path / "repo" / "bg.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "repo" / "bg.txt").exists()


@pytest.mark.parametrize(
    ("prompt", "code", "stderr"),
    [
        ("Fix it.\nPrevious attempt failed: test_greet\n", 0, ""),
        ("Fix it.\n", 4, "scripted agent: prompt lacks test_greet\n"),
    ],
)
def test_expect_in_prompt(tmp_path: Path, prompt: str, code: int, stderr: str) -> None:
    """expect_in_prompt goes on when the prompt holds the text and exits 4 when it does not."""
    script = """
        [[tasks.greet.attempts]]
        steps = [{ expect_in_prompt = "test_greet" }, { print = "went on" }]
    """
    result = run_agent(tmp_path, script, prompt=prompt)
    assert (result.returncode, result.stderr) == (code, stderr)
    assert ("went on" in result.stdout) is (code == 0)


def test_copy_prompt(tmp_path: Path) -> None:
    """copy_prompt copies the prompt file to a path relative to the cwd."""
    script = """
        [[tasks.greet.attempts]]
        steps = [{ copy_prompt = "../seen/prompt.md" }]
    """
    assert run_agent(tmp_path, script, prompt="Implement greet.\n").returncode == 0
    assert (tmp_path / "seen" / "prompt.md").read_text(encoding="utf-8") == "Implement greet.\n"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize("size", [0, 1, 65536, 200_000])
def test_flood(tmp_path: Path, stream: str, size: int) -> None:
    """flood writes exactly the asked number of bytes to the asked stream."""
    script = f"""
        [[tasks.greet.attempts]]
        steps = [{{ flood = {size}, stream = "{stream}" }}]
    """
    (tmp_path / "prompt.md").write_text("", encoding="utf-8")
    result = subprocess.run(
        _command(tmp_path, script),
        cwd=tmp_path / "repo",
        env=_env(tmp_path, "greet", "1"),
        capture_output=True,
        timeout=30,
    )
    start = len(b"scripted agent: task greet attempt 1\n")
    flooded = {"stdout": len(result.stdout) - start, "stderr": len(result.stderr)}
    assert result.returncode == 0
    assert flooded == {"stdout": 0, "stderr": 0} | {stream: size}


def test_ignore_sigterm(tmp_path: Path) -> None:
    """After ignore_sigterm the agent survives SIGTERM."""
    script = """
        [[tasks.greet.attempts]]
        steps = [{ ignore_sigterm = true }, { print = "ready" }, { sleep = 30 }]
    """
    (tmp_path / "prompt.md").write_text("", encoding="utf-8")
    with subprocess.Popen(
        _command(tmp_path, script),
        cwd=tmp_path / "repo",
        env=_env(tmp_path, "greet", "1"),
        stdout=subprocess.PIPE,
        text=True,
    ) as agent:
        assert agent.stdout is not None
        assert agent.stdout.readline().startswith("scripted agent:")
        assert agent.stdout.readline() == "ready\n"
        agent.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            agent.wait(timeout=0.3)
        agent.kill()


@pytest.mark.parametrize(
    ("script", "problem"),
    [
        pytest.param(None, "cannot read", id="missing"),
        pytest.param("[[tasks.greet.attempts]\n", "not valid TOML", id="invalid-toml"),
        pytest.param("[tasks.greet]\nattempts = 3\n", "tasks.greet.attempts", id="not-a-list"),
        pytest.param("[[tasks.greet.attempts]]\nexit = 'x'\n", "exit", id="bad-exit"),
        pytest.param("[[tasks.greet.attempts]]\nstep = []\n", "unknown key step", id="typo"),
        pytest.param("[[task.greet.attempts]]\n", "unknown key task", id="top-typo"),
    ],
)
def test_bad_script(tmp_path: Path, script: str | None, problem: str) -> None:
    """A missing, unreadable or ill-shaped script ends the agent with 3, naming the file."""
    result = run_agent(tmp_path, script)
    assert result.returncode == 3
    assert str(tmp_path / "script.toml") in result.stderr
    assert problem in result.stderr


@pytest.mark.parametrize(
    ("task", "attempt", "problem"),
    [
        (None, "1", "RALPH_TASK_ID"),
        ("greet", None, "RALPH_ATTEMPT"),
        ("greet", "zero", "RALPH_ATTEMPT"),
        ("greet", "0", "RALPH_ATTEMPT"),
    ],
)
def test_bad_environment(
    tmp_path: Path, task: str | None, attempt: str | None, problem: str
) -> None:
    """A missing task id or a missing or non-positive attempt ends the agent with 3."""
    result = run_agent(tmp_path, THREE_ATTEMPTS, task=task, attempt=attempt)
    assert result.returncode == 3
    assert problem in result.stderr


@pytest.mark.parametrize(
    ("bad_step", "problem"),
    [
        pytest.param('{ frobnicate = "x" }', "unknown action frobnicate", id="unknown"),
        pytest.param("{}", "unknown action nothing", id="empty"),
        pytest.param('{ write = "a", delete = "b" }', "one action per step", id="two"),
        pytest.param('{ rename = "a" }', "rename needs to", id="missing-option"),
        pytest.param('{ write = "a", mode = "755" }', "write takes no option mode", id="option"),
        pytest.param("{ write = 3 }", "write must be a string", id="type"),
        pytest.param('{ chmod = "a", mode = "9" }', "mode must be an octal", id="mode"),
        pytest.param('{ flood = 9, stream = "x" }', "stream must be", id="stream"),
        pytest.param("{ sleep = -1 }", "sleep must be", id="sleep"),
    ],
)
def test_bad_step(tmp_path: Path, bad_step: str, problem: str) -> None:
    """A bad step ends the agent with 3 before any step runs, naming file, task and step."""
    script = f"""
        [[tasks.greet.attempts]]
        [[tasks.greet.attempts]]
        steps = [{{ write = "first.txt", content = "x" }}, {bad_step}]
    """
    result = run_agent(tmp_path, script, attempt="2")
    assert result.returncode == 3
    assert str(tmp_path / "script.toml") in result.stderr
    assert "task greet attempt 2" in result.stderr
    assert "tasks.greet.attempts[1].steps[1]" in result.stderr
    assert problem in result.stderr
    assert not (tmp_path / "repo" / "first.txt").exists()


@pytest.mark.parametrize(
    ("default", "said", "code"),
    [
        ('[default]\nsteps = [{ print = "defaulted" }]\nexit = 6\n', ["defaulted"], 6),
        ("", [], 0),
    ],
)
def test_unknown_task(tmp_path: Path, default: str, said: list[str], code: int) -> None:
    """A task the script does not name follows [default], or does nothing and exits 0."""
    result = run_agent(tmp_path, default + THREE_ATTEMPTS, task="other")
    assert result.stdout.splitlines() == ["scripted agent: task other attempt 1", *said]
    assert result.returncode == code


@pytest.mark.parametrize(
    ("task", "attempt", "expected"),
    [
        ("greet", 1, ([{"print": "first"}], 1)),
        ("greet", 5, ([{"print": "second"}], 2)),
        ("other", 1, ([], 0)),
    ],
)
def test_attempt_steps(task: str, attempt: int, expected: tuple[list[dict[str, str]], int]) -> None:
    """attempt_steps gives a parsed script's steps and exit code for a task's attempt."""
    script = {
        "tasks": {
            "greet": {
                "attempts": [
                    {"steps": [{"print": "first"}], "exit": 1},
                    {"steps": [{"print": "second"}], "exit": 2},
                ]
            }
        }
    }
    assert attempt_steps(script, task, attempt) == expected


def test_attempt_steps_rejects_bad_shape() -> None:
    """attempt_steps raises ScriptError, a ValueError, for a script of the wrong shape."""
    with pytest.raises(ValueError, match="tasks.greet.attempts") as caught:
        attempt_steps({"tasks": {"greet": {"attempts": []}}}, "greet", 1)
    assert isinstance(caught.value, ScriptError)
