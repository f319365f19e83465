"""What the agent and the checks get to see: an allowlisted environment, always, and with
``sandbox = "bwrap"`` a box of bubblewrap around them (ralph.runtime.sandbox).

The environment is the same for the agent and the checks (the checks run code the agent
wrote): the allowlist of ralph.agents.keys, ``agent_env``, ``pass_env``, and the attempt's
own variables. ``RALPH_QUEUE``, tokens and database URLs never pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from ralph.agents import keys
from ralph.engine.worker import Run, Worker
from ralph.globs import matches
from ralph.runtime import sandbox

log = structlog.get_logger("ralph")


def environment(run: Run, extra: Mapping[str, str]) -> dict[str, str]:
    """The agent's and the checks' environment: the allowlisted part of ralph's own, then
    ``agent_env``, then ``extra`` (the attempt's variables, which win)."""
    settings = run.settings
    env = keys.allowlisted(run.env, settings.agent, settings.agent_env, settings.pass_env)
    env.update(extra)
    return env


def boxed(
    worker: Worker, argv: Sequence[str], *, files: Sequence[Path] = (), checks: bool = False
) -> list[str]:
    """``argv`` inside the sandbox when ``sandbox = "bwrap"`` (for the checks only with
    ``sandbox_checks``); as it is otherwise. ``files`` are the attempt's own files outside the
    worktree the command needs (the prompt read-only, the learnings file writable).
    Blocking (it asks git which files are tracked)."""
    return wrapper(worker, files=files, checks=checks, program=argv[0] if argv else "")(argv)


def wrapper(
    worker: Worker, *, files: Sequence[Path] = (), checks: bool = False, program: str = "/bin/sh"
) -> Callable[[Sequence[str]], list[str]]:
    """A function that puts a command line in the sandbox (or leaves it as it is), the
    sandbox worked out once for several commands (the checks). Blocking."""
    settings = worker.run.settings
    if settings.sandbox != "bwrap" or (checks and not settings.sandbox_checks):
        return list
    spec = _spec(worker, [program], files)
    return lambda argv: sandbox.bwrap_argv(spec, argv)


def _spec(worker: Worker, argv: Sequence[str], files: Sequence[Path]) -> sandbox.SandboxSpec:
    run, settings = worker.run, worker.run.settings
    bwrap = sandbox.find_bwrap()
    if bwrap is None:  # ralph doctor and the start refuse this; a race with an uninstall
        raise sandbox.SandboxUnavailable("bwrap is not installed (apt-get install bubblewrap)")
    worktree = worker.worktree.resolve()
    common = Path(
        run.git.run("rev-parse", "--path-format=absolute", "--git-common-dir").strip()
    ).resolve()
    home = Path(run.env.get("HOME", "/nonexistent")).resolve()
    tracked = run.git.at(worktree).run("ls-files", "-z").split("\0")
    readonly = sandbox.readonly_paths(
        worktree,
        [name for name in tracked if name],
        protected=settings.protected_globs(),
        append_only=settings.append_only,
        matches=matches,
    )
    if readonly.left_to_gate:
        log.info("ralph.sandbox_left_to_gate", files=len(readonly.left_to_gate))
    binds = [
        *sandbox.program_paths(home, run.env.get("PATH", ""), [argv[0]] if argv else []),
        *keys.home_binds(settings.agent, home, run.env, settings.sandbox_paths),
        *(
            sandbox.Bind(path, "rw" if path.name.startswith("learnings") else "ro")
            for path in files
        ),
    ]
    if settings.agent == "scripted" and settings.agent_script is not None:
        binds.append(sandbox.Bind((run.root / settings.agent_script).resolve(), "ro"))
    return sandbox.SandboxSpec(
        worktree=worktree,
        git_common_dir=common,
        repository=run.root.resolve(),
        readonly=readonly.paths,
        home=home,
        binds=tuple(binds),
        tmp=worker.tmpdir.resolve(),
        network=settings.network == "on",
        bwrap=bwrap,
    )
