"""ralph's deterministic fake coding agent: follows a TOML script, for demos and tests.

Run as ``python -m ralph.scripted SCRIPT_PATH`` in the repository root, with the
``RALPH_TASK_ID``, ``RALPH_ATTEMPT``, ``RALPH_PROMPT_FILE`` and ``RALPH_LEARNINGS_FILE``
variables ralph sets for every agent. The script names, per task and attempt, the steps
to take (write, run, learn...) and the exit code to end with, so one script can play an
honest agent, a flaky one or a hostile one. Exit codes: 3 when the script, a step or the
environment is unusable; 4 when ``expect_in_prompt`` fails; a failed ``check``'d command's
own status; otherwise the attempt's ``exit``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

SCRIPT_ERROR_EXIT = 3
PROMPT_MISMATCH_EXIT = 4
FLOOD_CHUNK = 64 * 1024


class AgentStop(Exception):
    """An expected end of the agent before its scripted exit; carries the exit code."""

    exit_code = 1


class ScriptError(AgentStop, ValueError):
    """The script, one of its steps or the environment cannot be followed."""

    exit_code = SCRIPT_ERROR_EXIT


class PromptMismatch(AgentStop):
    """The prompt lacks the text an ``expect_in_prompt`` step requires."""

    exit_code = PROMPT_MISMATCH_EXIT


class CheckFailed(AgentStop):
    """A ``run`` step with ``check = true`` exited non-zero; the agent exits with its status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.exit_code = status


@dataclass(frozen=True)
class Context:
    """Who this agent is and where its prompt and learnings live, read once from ralph's env."""

    task_id: str
    attempt: int
    prompt_file: Path | None
    learnings_file: Path | None

    def prompt(self, where: str) -> Path:
        if self.prompt_file is None:
            raise ScriptError(f"{where}: RALPH_PROMPT_FILE is not set")
        return self.prompt_file


@dataclass(frozen=True)
class Step:
    """One step of an attempt: its action name and its fields, with typed accessors."""

    where: str
    action: str
    fields: Mapping[str, object]

    def _bad(self, key: str, wanted: str) -> ScriptError:
        return ScriptError(f"{self.where}: {key} must be {wanted}, not {self.fields.get(key)!r}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.fields.get(key, default)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.fields.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def seconds(self, key: str) -> float:
        value = self.fields[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(key, "a number of seconds")
        if value < 0 or not math.isfinite(value):
            raise self._bad(key, "a finite number of seconds >= 0")
        return float(value)

    def count(self, key: str) -> int:
        value = self.fields[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._bad(key, "an integer >= 0")
        return value

    def mode(self, key: str) -> int:
        value = self.fields[key]
        if not isinstance(value, str) or not re.fullmatch(r"(0o)?[0-7]{1,4}", value):
            raise self._bad(key, 'an octal string such as "755"')
        return int(value, 8)

    def stream(self, key: str) -> BinaryIO:
        value = self.fields.get(key, "stdout")
        if value not in ("stdout", "stderr"):
            raise self._bad(key, '"stdout" or "stderr"')
        return sys.stdout.buffer if value == "stdout" else sys.stderr.buffer


Kind = Literal["text", "flag", "seconds", "count", "mode", "stream"]

_CHECKS: dict[Kind, Callable[[Step, str], object]] = {
    "text": Step.text,
    "flag": Step.flag,
    "seconds": Step.seconds,
    "count": Step.count,
    "mode": Step.mode,
    "stream": Step.stream,
}


@dataclass(frozen=True)
class Action:
    """What one action key does, the kind of its value and the options it takes."""

    perform: Callable[[Step, Context], None]
    value: Kind
    options: Mapping[str, Kind]
    required: frozenset[str] = frozenset()


def _write(step: Step, context: Context) -> None:
    path = Path(step.text("write"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(step.text("content", ""), encoding="utf-8")


def _append(step: Step, context: Context) -> None:
    path = Path(step.text("append"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(step.text("content", ""))


def _delete(step: Step, context: Context) -> None:
    path = Path(step.text("delete"))
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _rename(step: Step, context: Context) -> None:
    target = Path(step.text("to"))
    target.parent.mkdir(parents=True, exist_ok=True)
    Path(step.text("rename")).rename(target)


def _chmod(step: Step, context: Context) -> None:
    Path(step.text("chmod")).chmod(step.mode("mode"))


def _learn(step: Step, context: Context) -> None:
    if context.learnings_file is None:
        raise ScriptError(f"{step.where}: RALPH_LEARNINGS_FILE is not set")
    with context.learnings_file.open("a", encoding="utf-8") as file:
        file.write(f"- {step.text('learn')}\n")


def _run(step: Step, context: Context) -> None:
    argv = ["/bin/sh", "-c", step.text("run")]
    if step.flag("background"):
        # Deliberately never waited for: tests use it to leave a child behind.
        subprocess.Popen(argv)
        return
    status = subprocess.run(argv, check=False).returncode
    if status < 0:  # killed by a signal: report it the way a shell would
        status = 128 - status
    if status != 0 and step.flag("check"):
        raise CheckFailed(f"{step.where}: command exited {status}", status)


def _sleep(step: Step, context: Context) -> None:
    time.sleep(step.seconds("sleep"))


def _print(step: Step, context: Context) -> None:
    print(step.text("print"), flush=True)


def _expect_in_prompt(step: Step, context: Context) -> None:
    text = step.text("expect_in_prompt")
    if text not in context.prompt(step.where).read_text(encoding="utf-8"):
        raise PromptMismatch(f"prompt lacks {text}")


def _copy_prompt(step: Step, context: Context) -> None:
    target = Path(step.text("copy_prompt"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(context.prompt(step.where), target)


def _flood(step: Step, context: Context) -> None:
    remaining = step.count("flood")
    stream = step.stream("stream")
    sys.stdout.flush()  # keep the text layer's earlier lines ahead of the flood
    chunk = (b"x" * 63 + b"\n") * (FLOOD_CHUNK // 64)
    while remaining > 0:
        stream.write(chunk[:remaining])
        remaining -= min(remaining, FLOOD_CHUNK)
    stream.flush()


def _ignore_sigterm(step: Step, context: Context) -> None:
    if step.flag("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


ACTIONS: dict[str, Action] = {
    "write": Action(_write, "text", {"content": "text"}),
    "append": Action(_append, "text", {"content": "text"}),
    "delete": Action(_delete, "text", {}),
    "rename": Action(_rename, "text", {"to": "text"}, frozenset({"to"})),
    "chmod": Action(_chmod, "text", {"mode": "mode"}, frozenset({"mode"})),
    "learn": Action(_learn, "text", {}),
    "run": Action(_run, "text", {"background": "flag", "check": "flag"}),
    "sleep": Action(_sleep, "seconds", {}),
    "print": Action(_print, "text", {}),
    "expect_in_prompt": Action(_expect_in_prompt, "text", {}),
    "copy_prompt": Action(_copy_prompt, "text", {}),
    "flood": Action(_flood, "count", {"stream": "stream"}),
    "ignore_sigterm": Action(_ignore_sigterm, "flag", {}),
}


def parse_step(where: str, raw: Mapping[str, object]) -> Step:
    """Check one raw step table (one action key, known options, right types) into a Step."""
    actions = [key for key in raw if key in ACTIONS]
    if not actions:
        keys = ", ".join(sorted(raw)) or "nothing"
        raise ScriptError(f"{where}: unknown action {keys} (known: {', '.join(ACTIONS)})")
    if len(actions) > 1:
        raise ScriptError(f"{where}: one action per step, found {', '.join(actions)}")
    step = Step(where, actions[0], raw)
    action = ACTIONS[step.action]
    unknown = sorted(set(raw) - {step.action} - set(action.options))
    if unknown:
        raise ScriptError(f"{where}: {step.action} takes no option {', '.join(unknown)}")
    missing = sorted(action.required - set(raw))
    if missing:
        raise ScriptError(f"{where}: {step.action} needs {', '.join(missing)}")
    for key, kind in [(step.action, action.value), *action.options.items()]:
        if key in raw:
            _CHECKS[kind](step, key)
    return step


def perform(step: Step, context: Context) -> None:
    """Carry out one checked step; a failing file operation becomes a ScriptError."""
    try:
        ACTIONS[step.action].perform(step, context)
    except OSError as error:
        raise ScriptError(f"{step.where}: {step.action} failed: {error}") from error


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScriptError(f"{where}: must be a table, not {value!r}")
    return value


def _only_keys(table: Mapping[str, object], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed))
        raise ScriptError(f"{where}: unknown key {', '.join(unknown)} (known: {known})")


def _select_attempt(
    script: Mapping[str, object], task_id: str, attempt: int
) -> tuple[str, dict[str, Any]]:
    """Find the table that scripts this attempt, and where it sits in the script."""
    if attempt < 1:
        raise ScriptError(f"attempt must be 1 or more, not {attempt}")
    _only_keys(script, "the script", {"default", "tasks"})
    tasks = _table(script.get("tasks", {}), "tasks")
    if task_id not in tasks:
        return "default", _table(script.get("default", {}), "default")
    where = f"tasks.{_toml_key(task_id)}"
    entry = _table(tasks[task_id], where)
    _only_keys(entry, where, {"attempts"})
    attempts = entry.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        raise ScriptError(f"{where}.attempts: must be a non-empty array of tables")
    index = min(attempt, len(attempts)) - 1
    where = f"{where}.attempts[{index}]"
    return where, _table(attempts[index], where)


def _attempt_plan(where: str, table: Mapping[str, object]) -> tuple[list[dict[str, Any]], int]:
    _only_keys(table, where, {"steps", "exit"})
    steps = table.get("steps", [])
    if not isinstance(steps, list):
        raise ScriptError(f"{where}.steps: must be an array of tables, not {steps!r}")
    exit_code = table.get("exit", 0)
    if isinstance(exit_code, bool) or not isinstance(exit_code, int) or not 0 <= exit_code < 256:
        raise ScriptError(f"{where}.exit: must be an integer from 0 to 255, not {exit_code!r}")
    return [_table(step, f"{where}.steps[{i}]") for i, step in enumerate(steps)], exit_code


def attempt_steps(
    script: dict[str, Any], task_id: str, attempt: int
) -> tuple[list[dict[str, Any]], int]:
    """The raw steps and exit code a parsed script gives this task's attempt (1-based).

    Past the last scripted attempt the last one is reused; a task the script does not
    name follows ``[default]``, or does nothing and exits 0. Raises ScriptError (a
    ValueError) when the script's shape is wrong.
    """
    return _attempt_plan(*_select_attempt(script, task_id, attempt))


def load_script(path: Path) -> dict[str, Any]:
    """Read and parse a script file; any failure is a ScriptError."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ScriptError(f"cannot read the script: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ScriptError(f"not valid TOML: {error}") from error


def _context(env: Mapping[str, str]) -> Context:
    task_id = env.get("RALPH_TASK_ID", "")
    if not task_id:
        raise ScriptError("RALPH_TASK_ID is not set")
    raw_attempt = env.get("RALPH_ATTEMPT", "")
    attempt = int(raw_attempt) if raw_attempt.strip().isdigit() else 0
    if attempt < 1:
        raise ScriptError(f"RALPH_ATTEMPT must be an integer >= 1, not {raw_attempt!r}")
    prompt, learnings = env.get("RALPH_PROMPT_FILE"), env.get("RALPH_LEARNINGS_FILE")
    return Context(
        task_id=task_id,
        attempt=attempt,
        prompt_file=Path(prompt) if prompt else None,
        learnings_file=Path(learnings) if learnings else None,
    )


def follow(script_path: Path, context: Context) -> int:
    """Check every step of this attempt, then carry them out; return the scripted exit code."""
    try:
        where, table = _select_attempt(load_script(script_path), context.task_id, context.attempt)
        raw_steps, exit_code = _attempt_plan(where, table)
        steps = [parse_step(f"{where}.steps[{i}]", raw) for i, raw in enumerate(raw_steps)]
        for step in steps:
            perform(step, context)
    except ScriptError as error:
        who = f"task {context.task_id} attempt {context.attempt}"
        raise ScriptError(f"{script_path}: {who}: {error}") from error
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m ralph.scripted SCRIPT_PATH``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 1:
            raise ScriptError("usage: python -m ralph.scripted SCRIPT_PATH")
        context = _context(os.environ)
        print(f"scripted agent: task {context.task_id} attempt {context.attempt}", flush=True)
        return follow(Path(args[0]), context)
    except AgentStop as stop:
        sys.stdout.flush()
        print(f"scripted agent: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
