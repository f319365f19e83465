"""``ralph doctor``: is everything ralph needs here, and does it run?

Each check returns findings; the CLI prints one line per finding and exits non-zero
when any is a problem. Nothing here changes the repository.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ralph import agents
from ralph.agents import keys
from ralph.errors import RalphError
from ralph.memory.learnings import audit
from ralph.runtime import sandbox
from ralph.runtime.atomic import bytes_under
from ralph.runtime.lock import lock_holder
from ralph.settings import Settings
from ralph.vcs import repo

# Words a check may start with that are shell syntax or builtins, not programs on PATH.
_SHELL_WORDS = frozenset(
    [
        "!",
        "[",
        "[[",
        "{",
        "(",
        ".",
        ":",
        "cd",
        "command",
        "echo",
        "eval",
        "exec",
        "exit",
        "export",
        "false",
        "for",
        "if",
        "printf",
        "set",
        "source",
        "test",
        "true",
        "type",
        "ulimit",
        "umask",
        "unset",
        "while",
    ]
)


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report."""

    ok: bool
    topic: str
    text: str

    def render(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.topic}: {self.text}"


def examine(root: Path, settings: Settings | None) -> list[Finding]:
    """Every finding for the repository at ``root``; with no usable settings (None), the
    findings that don't need them (git, repository, lock)."""
    if settings is None:
        return [*_git(root), _lock(root)]
    return [
        *_git(root),
        *_agent(root, settings),
        *[_check(root, command) for command in settings.checks],
        _specs(root, settings),
        _lock(root),
        _sandbox(settings),
        _environment(settings),
        _memory(root, settings),
        _ralph_dir(root),
    ]


def _sandbox(settings: Settings) -> Finding:
    """Whether bubblewrap works here (always probed: ``sandbox = "bwrap"`` depends on it)."""
    probe = sandbox.check()
    wanted = settings.sandbox == "bwrap"
    if probe.works:
        state = "on" if wanted else 'off (sandbox = "none"); bwrap works here'
        return Finding(True, "sandbox", f"{state}; network {settings.network}")
    if wanted:
        return Finding(False, "sandbox", probe.message)
    return Finding(True, "sandbox", f'off (sandbox = "none"); bwrap: {probe.message}')


def _environment(settings: Settings) -> Finding:
    """Which variables the agent and the checks get (names only, never values)."""
    report = keys.environment_report(
        dict(os.environ), settings.agent, settings.agent_env, settings.pass_env
    )
    passed = ", ".join(report.passed[:40]) + (" ..." if len(report.passed) > 40 else "")
    text = f"passed {len(report.passed)} ({passed}); withheld {len(report.withheld)}"
    if report.withheld:
        text += f" ({', '.join(report.withheld[:20])}{' ...' if len(report.withheld) > 20 else ''})"
    return Finding(True, "environment", text)


def _memory(root: Path, settings: Settings) -> Finding:
    """Lines of the memory file (and its mirrors) the screen would hold back: agents read
    them before every task. A warning, not a failure: a person may have meant them."""
    findings = audit(root, settings)
    if not findings:
        return Finding(
            True, "memory", f"{settings.memory_file}: nothing the screen would hold back"
        )
    return Finding(
        True,
        "memory",
        f"{len(findings)} line(s) the screen would hold back, e.g. {findings[0]}; "
        "see `ralph learnings audit`",
    )


def _ralph_dir(root: Path) -> Finding:
    total = bytes_under(root / repo.STATE_DIR)
    return Finding(True, ".ralph", f"{total / 1e6:.1f} MB (attempts are pruned: keep_attempts)")


def _git(root: Path) -> list[Finding]:
    git = shutil.which("git")
    if git is None:
        return [Finding(False, "git", "git is not on PATH")]
    version = _run([git, "--version"], root)
    findings = [Finding(version is not None, "git", version or "git --version failed")]
    try:
        branch = repo.current_branch(root)
        findings.append(Finding(True, "repository", f"{root} on branch {branch}"))
    except RalphError as exc:
        findings.append(Finding(False, "repository", str(exc)))
    return findings


def _agent(root: Path, settings: Settings) -> list[Finding]:
    try:
        agent = agents.make_agent(settings, root)
    except RalphError as exc:
        return [Finding(False, "agent", str(exc))]
    program = agents.resolve_executable(agent.executable(), root)
    if program is None:
        return [Finding(False, "agent", f"{settings.agent}: {agent.executable()!r} is not on PATH")]
    if settings.agent in ("command", "scripted"):  # no CLI of ours: found is all we know
        return [Finding(True, "agent", f"{settings.agent}: {program}")]
    version = _run([program, "--version"], root)
    if version is None:
        return [Finding(False, "agent", f"{settings.agent}: {program} --version failed")]
    return [Finding(True, "agent", f"{settings.agent}: {program} ({version})")]


def _check(root: Path, command: str) -> Finding:
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return Finding(False, "check", f"{command!r} can't be parsed: {exc}")
    first = next((word for word in words if "=" not in word), "")  # skip VAR=value prefixes
    if not first or first in _SHELL_WORDS:
        return Finding(True, "check", f"{command!r}")
    found = (root / first).exists() if "/" in first else shutil.which(first) is not None
    text = f"{command!r}" if found else f"{command!r}: {first!r} not found"
    return Finding(found, "check", text)


def _specs(root: Path, settings: Settings) -> Finding:
    specs = root / settings.specs_dir
    if not specs.is_dir():
        return Finding(False, "specs", f"{settings.specs_dir} does not exist (ralph init)")
    count = sum(1 for _ in specs.rglob("*.md"))
    return Finding(True, "specs", f"{count} spec file(s) in {settings.specs_dir}")


def _lock(root: Path) -> Finding:
    holder = lock_holder(root / repo.STATE_DIR / "lock")
    if holder is None:
        return Finding(True, "lock", "free")
    return Finding(True, "lock", f"held by ralph pid {holder} (a run is in progress)")


def _run(argv: list[str], root: Path) -> str | None:
    """The first line a short command prints, or None when it fails or hangs."""
    try:
        done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0][:120] if lines else "ok"
