"""Shared fixtures: real git repositories in tmp_path and ralph run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest


def toml_value(value: Any) -> str:
    """Render a value as TOML (inline tables, so any nesting fits on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }"
    raise TypeError(f"cannot render {value!r} as TOML")


def to_toml(table: Mapping[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in table.items())


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


class Project:
    """A throwaway git repository set up for ralph with the scripted agent."""

    def __init__(self, root: Path, script_path: Path) -> None:
        self.root = root
        self.script_path = script_path
        self.script: dict[str, Any] = {"tasks": {}}
        self.settings: dict[str, Any] = {
            "agent": "scripted",
            "agent_script": str(script_path),
            "checks": ["true"],
            "kill_grace": "1s",
            "poll_interval": "1s",
        }

    def write(self, relative: str, content: str | bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def spec(self, name: str, body: str = "", **front: Any) -> Path:
        """Write specs/<name>.md with YAML front matter from ``front``."""
        text = body or f"# Task {name}\n\nDo {name}.\n"
        if front:
            lines = [f"{key}: {json.dumps(value)}" for key, value in front.items()]
            text = "---\n" + "\n".join(lines) + "\n---\n" + text
        return self.write(f"specs/{name}.md", text)

    def attempts(self, task_id: str, *attempts: Mapping[str, Any]) -> None:
        """Script the scripted agent: one mapping (steps, exit) per attempt."""
        self.script["tasks"][task_id] = {"attempts": [dict(a) for a in attempts]}
        self.save_script()

    def save_script(self) -> None:
        self.script_path.write_text(to_toml(self.script), encoding="utf-8")

    def configure(self, **settings: Any) -> None:
        self.settings.update(settings)
        self.write("ralph.toml", to_toml(self.settings))

    def commit(self, message: str = "setup") -> str:
        self.write("ralph.toml", to_toml(self.settings))
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return git(self.root, "rev-parse", "HEAD").strip()

    def git(self, *args: str) -> str:
        return git(self.root, *args)

    def ralph(
        self,
        *args: str,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        check_code: int | None = None,
        keep_notify: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ralph -C root ARGS`` as a real process and return what it did."""
        full_env = {**os.environ, **(env or {})}
        if not keep_notify:
            full_env.pop("NOTIFY_SOCKET", None)
        argv = [sys.executable, "-m", "ralph", "-C", str(self.root), "--log-format", "json"]
        try:
            result = subprocess.run(
                [*argv, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
            )
        except subprocess.TimeoutExpired as exc:
            said = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise AssertionError(
                f"ralph {' '.join(args)} ran past {timeout}s:\n{said[-6000:]}"
            ) from None
        if check_code is not None:
            assert result.returncode == check_code, (
                result.returncode,
                result.stdout,
                result.stderr,
            )
        return result

    def popen(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start ``ralph -C root ARGS`` in the background."""
        return subprocess.Popen(
            [sys.executable, "-m", "ralph", "-C", str(self.root), "--log-format", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def task_commits(self) -> list[tuple[str, str]]:
        """(task id, attempt) of every ralph task commit on HEAD, oldest first."""
        out = self.git(
            "log",
            "--reverse",
            "--format=%(trailers:key=Ralph-Task,valueonly,separator=)%x09"
            "%(trailers:key=Ralph-Attempt,valueonly,separator=)",
        )
        rows = [line.split("\t") for line in out.splitlines() if line.strip()]
        return [(row[0], row[1]) for row in rows if row[0]]

    def subjects(self) -> list[str]:
        return self.git("log", "--reverse", "--format=%s").splitlines()

    def status_json(self) -> dict[str, dict[str, Any]]:
        result = self.ralph("status", "--json", check_code=0)
        return {task["id"]: task for task in json.loads(result.stdout)["tasks"]}

    def worktree(self, worker: int = 0) -> Path:
        """The worktree where ralph's worker runs its agents and checks."""
        return self.root / ".ralph" / "worktrees" / f"w{worker}"

    def current_attempt(self, worker: int = 0) -> dict[str, Any] | None:
        """The attempt a worker is in, as ralph recorded it (None: in none, or mid-write)."""
        path = self.root / ".git" / "ralph" / "workers" / f"{worker}.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())["record"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return record

    def events(self) -> list[dict[str, Any]]:
        path = self.root / ".ralph" / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A git repository with one commit, a specs/ folder and ralph set up for the scripted agent."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test User")
    git(root, "config", "user.email", "test@example.invalid")
    proj = Project(root, tmp_path / "script.toml")
    proj.save_script()
    proj.write("AGENTS.md", "# Agents\n\nHuman notes.\n")
    proj.write("README.md", "sample\n")
    (root / "specs").mkdir()
    proj.commit("initial")
    yield proj
