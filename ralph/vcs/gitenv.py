"""How ralph runs git: its own environment, built from scratch, the same for every command.

An agent runs as the same user as ralph and may rewrite ``~/.gitconfig``, ``.git/config``,
``.git/hooks``, ``.git/shallow`` or replace refs while ralph works. None of that may change
what ralph stores or run code with ralph's rights, so every git command ralph runs:

- reads the user's global and system configuration as it was when ralph started (a
  snapshot, through ``GIT_CONFIG_GLOBAL``/``GIT_CONFIG_SYSTEM``), with the filter drivers of
  the repository's own configuration pinned to their values at start (Git LFS keeps working);
- runs no hook (``core.hooksPath`` is an empty folder of ralph's), no fsmonitor, no
  sparse checkout, no automatic gc in the background, no rerere;
- ignores replace refs and grafts, and reads history through the shallow file as it was at
  start, so a forged ``.git/shallow`` can't hide commits (and done tasks);
- inherits no ``GIT_*`` variable from ralph's own environment.

GitPython copies ``os.environ`` into every command it runs and can't unset a variable, so
these commands go through ``subprocess`` with an environment made here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ralph.errors import RepositoryError

RECORDS_DIR = "ralph"
"""ralph's own records, inside the repository's git directory, out of the work tree."""

# Configuration that decides what ralph's git runs or writes, fixed whatever any file says.
_FIXED = {
    "core.fsmonitor": "false",
    "core.sparseCheckout": "false",
    "core.splitIndex": "false",
    "core.untrackedCache": "false",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "rerere.enabled": "false",
    "advice.detachedHead": "false",
    "commit.verbose": "false",
    "merge.renames": "true",
}
# A filter driver's keys: programs git runs on content, so they are pinned at start.
_FILTER_KEYS = ("clean", "smudge", "process", "required")


class GitFailed(RepositoryError):
    """A git command ralph ran failed; the message holds what git said."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        shown = " ".join(argv[:4])
        super().__init__(f"git {shown} failed (exit {code}): {stderr.strip()[-800:]}")
        self.code = code
        self.stderr = stderr


@dataclass(frozen=True)
class Attempted:
    """How a git command that may fail ended."""

    code: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass(frozen=True)
class GitEnv:
    """The environment and ``-c`` settings of every git command ralph runs."""

    variables: Mapping[str, str]
    shallow_file: Path
    scratch: Path
    """A private folder for this process: snapshots, the empty hooks folder, temp indexes."""
    config: Mapping[str, str] = field(default_factory=dict)
    user_hooks: Path = Path("/nonexistent")
    """Where the user's hooks were at start (``core.hooksPath`` or ``.git/hooks``), for
    ``run_hooks``."""

    @classmethod
    def snapshot(cls, root: Path, environ: Mapping[str, str], scratch: Path) -> GitEnv:
        """Take the snapshot now: the user's global and system configuration, the repository's
        filter drivers and its shallow file, written into ``scratch`` (created, private)."""
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        base = _base_environment(environ)
        hooks = scratch / "no-hooks"
        hooks.mkdir(exist_ok=True)
        global_file, system_file = scratch / "global.gitconfig", scratch / "system.gitconfig"
        global_file.write_text(_config_text(_read_config(root, base, "--global")), "utf-8")
        system_file.write_text(_config_text(_read_config(root, base, "--system")), "utf-8")
        config = dict(_FIXED)
        config["core.hooksPath"] = str(hooks)
        for key, value in _read_config(root, base, "--local"):
            section, _, name = key.rpartition(".")
            if section.startswith("filter.") and name in _FILTER_KEYS:
                config[key] = value
        shallow = scratch / "shallow"
        shallow.write_bytes(_read_shallow(root, base))
        user_hooks = _git_path(root, base, "hooks")
        variables = {
            **base,
            "GIT_CONFIG_GLOBAL": str(global_file),
            "GIT_CONFIG_SYSTEM": str(system_file),
            "GIT_NO_REPLACE_OBJECTS": "1",
            "GIT_GRAFT_FILE": str(scratch / "no-grafts"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            "LANGUAGE": "C",
        }
        return cls(variables, shallow, scratch, config, user_hooks)

    @classmethod
    def for_process(cls, root: Path, environ: Mapping[str, str]) -> GitEnv:
        """A snapshot in a private temporary folder, for a ralph command that runs git."""
        return cls.snapshot(root, environ, Path(tempfile.mkdtemp(prefix="ralph-git-")))

    def discard(self) -> None:
        """Remove the snapshot's folder (at the end of the process)."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    def environment(self, index: Path | None = None) -> dict[str, str]:
        """The environment of one command; ``index`` replaces the index file (a private one)."""
        env = dict(self.variables)
        env["GIT_CONFIG_COUNT"] = str(len(self.config))
        for number, (key, value) in enumerate(self.config.items()):
            env[f"GIT_CONFIG_KEY_{number}"] = key
            env[f"GIT_CONFIG_VALUE_{number}"] = value
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        return env


@dataclass(frozen=True)
class Git:
    """git in one work tree (the user's, or one of ralph's worktrees), run ralph's way."""

    cwd: Path
    env: GitEnv
    git_dir: Path | None = None
    """Named explicitly for ralph's worktrees: git never goes looking for it (an agent that
    deletes its worktree's ``.git`` file must not make ralph's git find the user's)."""

    def at(self, cwd: Path, git_dir: Path | None = None) -> Git:
        """The same git in another work tree of the repository."""
        return Git(cwd, self.env, git_dir)

    def run(
        self,
        *args: str,
        index: Path | None = None,
        input: bytes | None = None,
        history: bool = False,
        check: bool = True,
    ) -> str:
        """Run ``git ARGS`` and return its output (surrogate-escaped, so any path survives).

        ``history``: read history through the shallow file as it was at start.
        """
        return self.run_bytes(*args, index=index, input=input, history=history, check=check).decode(
            "utf-8", errors="surrogateescape"
        )

    def run_bytes(
        self,
        *args: str,
        index: Path | None = None,
        input: bytes | None = None,
        history: bool = False,
        check: bool = True,
    ) -> bytes:
        """Run ``git ARGS`` and return its standard output as bytes."""
        argv = self._argv(args, history)
        done = subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env.environment(index),
            input=input,
            capture_output=True,
            check=False,
        )
        if check and done.returncode != 0:
            raise GitFailed(args, done.returncode, done.stderr.decode("utf-8", "replace"))
        return done.stdout

    def attempt(self, *args: str, index: Path | None = None) -> Attempted:
        """Run ``git ARGS`` that may fail for a reason ralph reports: exit code and stderr."""
        done = subprocess.run(
            self._argv(args, False),
            cwd=self.cwd,
            env=self.env.environment(index),
            capture_output=True,
            check=False,
        )
        return Attempted(done.returncode, done.stderr.decode("utf-8", "replace").strip())

    def status(self, *args: str, index: Path | None = None, history: bool = False) -> int:
        """Run ``git ARGS`` for its exit status only (a question such as ``merge-base``)."""
        done = subprocess.run(
            self._argv(args, history),
            cwd=self.cwd,
            env=self.env.environment(index),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return done.returncode

    def stream(self, *args: str, into: IO[bytes], index: Path | None = None) -> None:
        """Run ``git ARGS`` with its output written straight into ``into`` (never in memory)."""
        done = subprocess.run(
            self._argv(args, False),
            cwd=self.cwd,
            env=self.env.environment(index),
            stdout=into,
            stderr=subprocess.PIPE,
            check=False,
        )
        if done.returncode != 0:
            raise GitFailed(args, done.returncode, done.stderr.decode("utf-8", "replace"))

    def stream_capped(self, *args: str, into: IO[bytes], cap: int) -> int:
        """Like ``stream``, but stop git once ``cap`` bytes were written; returns how many
        bytes git had produced by then (more than ``cap`` when it was cut)."""
        proc = subprocess.Popen(
            self._argv(args, False),
            cwd=self.cwd,
            env=self.env.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        total = 0
        with proc.stdout:
            while chunk := proc.stdout.read(1 << 20):
                room = cap - total
                if room > 0:
                    into.write(chunk[:room])
                total += len(chunk)
                if total > cap:
                    proc.kill()
                    break
        proc.wait()
        return total

    def _argv(self, args: Sequence[str], history: bool) -> list[str]:
        shallow = ["--shallow-file", str(self.env.shallow_file)] if history else []
        where = []
        if self.git_dir is not None:
            where = ["--git-dir", str(self.git_dir), "--work-tree", str(self.cwd)]
        return ["git", *where, *shallow, *args]


def _base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """ralph's environment without any ``GIT_*`` variable (a hook's GIT_DIR, a caller's
    GIT_INDEX_FILE or GIT_CONFIG_PARAMETERS would redirect ralph's git)."""
    return {key: value for key, value in environ.items() if not key.startswith("GIT_")}


def _read_config(root: Path, base: Mapping[str, str], scope: str) -> list[tuple[str, str]]:
    """Every (key, value) of one configuration scope, includes resolved."""
    env = {**base, "LC_ALL": "C"}
    done = subprocess.run(
        ["git", "config", scope, "--list", "-z", "--includes"],
        cwd=root,
        env=env,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return []  # no such file: an empty scope
    entries = []
    for item in done.stdout.decode("utf-8", "surrogateescape").split("\0"):
        key, _, value = item.partition("\n")
        if key:
            entries.append((key, value))
    return entries


def _git_path(root: Path, base: Mapping[str, str], name: str) -> Path:
    done = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-path", name],
        cwd=root,
        env=base,
        capture_output=True,
        check=False,
    )
    return Path(os.fsdecode(done.stdout.strip())) if done.returncode == 0 else Path("/nonexistent")


def _read_shallow(root: Path, base: Mapping[str, str]) -> bytes:
    done = subprocess.run(
        ["git", "rev-parse", "--git-common-dir"],
        cwd=root,
        env=base,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RepositoryError(f"{root}: not a git repository (run `git init` first)")
    common = (root / done.stdout.decode().strip()).resolve()
    try:
        return (common / "shallow").read_bytes()
    except FileNotFoundError:
        return b""


def _config_text(entries: list[tuple[str, str]]) -> str:
    """A configuration file that reads back as exactly ``entries`` (order and repeats kept)."""
    lines = []
    for key, value in entries:
        if key.startswith(("include.", "includeif.")):
            continue  # already resolved into the entries: the snapshot must not read files
        section, _, name = key.rpartition(".")
        head, _, sub = section.partition(".")
        title = f'[{head} "{_escape(sub)}"]' if sub else f"[{head}]"
        lines.append(f'{title}\n\t{name} = "{_escape(value)}"\n')
    return "".join(lines)


def _escape(text: str) -> str:
    return (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\b", "\\b")
    )


def records_dir(root: Path, environ: Mapping[str, str]) -> Path:
    """``<git common dir>/ralph``: where ralph keeps its records, outside the work tree."""
    done = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        cwd=root,
        env=_base_environment(environ),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RepositoryError(f"{root}: not a git repository (run `git init` first)")
    return Path(os.fsdecode(done.stdout.strip())) / RECORDS_DIR
