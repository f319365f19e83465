"""Settings: ``ralph.toml`` (or ``[tool.ralph]``), then ``RALPH_*`` variables, then flags.

Built once by the CLI and passed down as one frozen object. A bad setting raises
SettingsError naming the key and where its value came from, before anything is touched.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ralph.durations import parse_duration
from ralph.errors import SettingsError


def _not_bool(value: object) -> object:
    # pydantic would read `true` as 1; a switch where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not true/false")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Count = Annotated[int, BeforeValidator(_not_bool)]
AgentName = Literal["claude", "codex", "gemini", "opencode", "amp", "aider", "scripted", "command"]

SETTINGS_FILE = "ralph.toml"
ENV_PREFIX = "RALPH_"


class Settings(BaseSettings):
    """Everything a user can set; see docs/settings.md for the reference.

    Build it with load_settings, which layers file, environment and flags; constructed
    directly it reads nothing but its arguments (its one source is the init arguments).
    """

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    agent: AgentName = "claude"
    """Which agent runs each attempt: a preset name, ``scripted`` or ``command``."""

    agent_command: str | None = None
    """With ``agent = "command"``: the command line; ``{prompt_file}`` becomes the prompt's path."""

    agent_script: Path | None = None
    """With ``agent = "scripted"``: the TOML script the built-in scripted agent follows."""

    checks: list[str]
    """Commands that must all exit 0 before ralph commits. Required."""

    specs_dir: Path = Path("specs")
    """Where task specs live, relative to the repository root."""

    memory_file: Path = Path("AGENTS.md")
    """The memory file agents read and ralph appends learnings to."""

    max_attempts: Count = Field(default=3, ge=1, le=100)
    """Attempts per task, each with a fresh agent."""

    workers: Count = Field(default=1, ge=1, le=64)
    """Agents at once, each in its own worktree under ``.ralph/worktrees/``."""

    attempt_timeout: Duration = 1800.0
    """How long one agent run may take before its process group is stopped."""

    check_timeout: Duration = 600.0
    """How long one check command may take."""

    agent_stall_timeout: Duration = 600.0
    """An agent whose CLI streams events and prints none for this long is stopped; the
    attempt fails as ``stalled`` (CLIs read live only: claude, codex, gemini, opencode)."""

    kill_grace: Duration = 10.0
    """Time between SIGTERM and SIGKILL when stopping a process group."""

    protected: list[str] = Field(default_factory=list)
    """Extra globs the agent must not change (specs, ralph.toml and the memory file always are)."""

    append_only: list[str] = Field(default_factory=list)
    """Globs where the agent may add files but not change or delete existing ones."""

    poll_interval: Duration = 30.0
    """How often the idle daemon looks for new specs."""

    memory_budget: Count = Field(default=32_768, ge=1024)
    """Bytes of the memory file carried in each prompt."""

    model: str | None = None
    """The model the agent CLI should use (its own names); unset: the CLI's default."""

    agent_args: list[str] = Field(default_factory=list)
    """Extra command-line arguments for the agent CLI, after the preset's own."""

    agent_env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the agent (set last, so they win)."""

    breaker_threshold: Count = Field(default=3, ge=1)
    """Stop after this many consecutive tasks failed for the same reason."""

    retry_backoff: Duration = 30.0
    """First wait after a model API outage or a usage limit with no reset time; doubles."""

    retry_max_wait: Duration = 43_200.0
    """The longest ralph waits out limits and outages for one attempt (12h) before it
    counts the attempt as failed; a limit that resets later stops the run."""

    max_cost_usd: float | None = Field(default=None, gt=0)
    """Take no new task once the agents' reported spend in this run reaches this."""

    learnings: Literal["auto", "review"] = "auto"
    """``auto``: learnings go straight into the memory file; ``review``: they wait in
    ``.ralph/learnings-pending.md`` for ``ralph learnings accept``."""

    max_learnings_per_attempt: Count = Field(default=10, ge=0, le=100)
    """At most this many learnings are taken from one attempt."""

    learnings_retention: Duration = 90 * 86400.0
    """``ralph learnings compact`` moves learnings older than this to the archive."""

    learnings_archive: Path = Path("docs/learnings-archive.md")
    """Where compaction moves old learnings, relative to the repository root."""

    keep_attempts: Count = Field(default=500, ge=1)
    """Attempt folders kept under ``.ralph/attempts`` (the newest; the last failed attempt of
    every task and any attempt in progress are always kept)."""

    keep_attempts_for: Duration = 30 * 86400.0
    """Attempt folders older than this are removed (with the same exceptions)."""

    queue: str | None = None
    """A PostgreSQL URL: every ``ralph run`` given it, on any machine, shares one backlog
    (needs ``ralphd[queue]``; see docs/distributed.md)."""

    remote: str = "origin"
    """With ``queue``: the remote whose copy of the work branch is where changes land."""

    stall_timeout: Duration = 60.0
    """With ``queue``: a process not heard from for this long loses its tasks to the others."""

    run_hooks: bool = False
    """Run the repository's pre-commit and commit-msg hooks (as they were when ralph started)
    before each task commit; off: no hook ever runs for ralph's git."""

    check_cache: list[str] = Field(default_factory=list)
    """Ignored paths kept between check runs in ralph's checkout (``.venv``, ``node_modules``);
    every other ignored file is removed before the checks run."""

    allow_nested_repos: bool = False
    """Let a change hold a gitlink: a nested git repository, or a submodule's new commit."""

    allow_external_symlinks: bool = False
    """Let a change add a symlink that points outside the repository."""

    sandbox: Literal["none", "bwrap"] = "none"
    """``bwrap``: the agent (and with ``sandbox_checks`` the checks) run under bubblewrap: the
    worktree writable; .git, the specs, the settings and memory files, ``protected`` and
    existing ``append_only`` files read-only; an empty home but for the agent's own folders
    and ``sandbox_paths``; a private /tmp (docs/sandbox.md)."""

    network: Literal["on", "off"] = "on"
    """With ``sandbox = "bwrap"``: ``off`` leaves the sandbox only its own loopback."""

    sandbox_checks: bool = True
    """With ``sandbox = "bwrap"``: run the checks in the same sandbox (they run code the agent
    wrote)."""

    sandbox_paths: dict[str, Literal["ro", "rw"]] = Field(default_factory=dict)
    """More paths the sandbox shows, read-only or writable; ``~/`` is the home directory."""

    pass_env: list[str] = Field(default_factory=list)
    """Names or globs (``AWS_*``) of variables passed to the agent and the checks beyond the
    allowlist."""

    secret_scan: bool = True
    """Scan the lines each change adds for secrets before committing; a finding fails the
    attempt (``secret``)."""

    secret_allowlist: list[str] = Field(default_factory=list)
    """Globs of paths whose secrets are fakes (``tests/fixtures/**``), and ``re:`` regexes
    matched against a found value."""

    @field_validator("checks")
    @classmethod
    def _checks_not_empty(cls, value: list[str]) -> list[str]:
        cleaned = [check.strip() for check in value]
        if not cleaned:
            raise ValueError("at least one check command is required")
        if any(not check for check in cleaned):
            raise ValueError("a check command is empty")
        return cleaned

    @field_validator("sandbox_paths")
    @classmethod
    def _sandbox_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for path in value:
            if not (path.startswith("/") or path.startswith("~/")):
                raise ValueError(f"{path!r} must be absolute or start with ~/")
        return value

    @field_validator("secret_allowlist")
    @classmethod
    def _secret_allowlist(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry.startswith("re:"):
                try:
                    re.compile(entry[3:])
                except re.error as exc:
                    raise ValueError(f"{entry!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("specs_dir", "memory_file", "learnings_archive")
    @classmethod
    def _relative(cls, value: Path) -> Path:
        if value.is_absolute() or ".." in value.parts:
            raise ValueError(f"{value} must be a path inside the repository")
        return value

    _settings_file: str = PrivateAttr(default=SETTINGS_FILE)

    def protected_globs(self) -> list[str]:
        """The globs the agent may not touch: the built-in ones plus ``protected``.

        The file the settings came from is one of them (``pyproject.toml`` when they
        live in ``[tool.ralph]``): an agent must not rewrite its own checks.
        """
        builtin = [
            f"{self.specs_dir.as_posix()}/**",
            SETTINGS_FILE,
            self._settings_file,
            self.memory_file.as_posix(),
        ]
        builtin = list(dict.fromkeys(builtin))
        return builtin + [glob for glob in self.protected if glob not in builtin]


def read_settings_file(root: Path) -> tuple[dict[str, Any], str]:
    """Return the settings table and a label for it (``ralph.toml`` or ``pyproject.toml``)."""
    path = root / SETTINGS_FILE
    if path.is_file():
        return _read_toml(path), SETTINGS_FILE
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {})
        ralph = table.get("ralph") if isinstance(table, dict) else None
        if isinstance(ralph, dict):
            return ralph, "pyproject.toml [tool.ralph]"
    return {}, SETTINGS_FILE


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path.name}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"{path.name}: cannot read: {exc.strerror}") from exc


def env_name(key: str) -> str:
    """The environment variable that sets ``key``: ``RALPH_`` and the key in upper case."""
    return f"{ENV_PREFIX}{key.upper()}"


def load_settings(
    root: Path, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings for the repository at ``root``; raise SettingsError on any problem.

    Each key comes from the last layer that sets it: the settings file, then ``RALPH_<KEY>``
    in ``environ`` (default ``os.environ``), then ``flags`` (None means the flag wasn't given).
    Every layer is read once and the merged values are validated once; an error names the
    key and the layer its value came from.
    """
    flag_values = {key: value for key, value in (flags or {}).items() if value is not None}
    file_values, file_label = read_settings_file(root)
    env_values = _from_environ(os.environ if environ is None else environ)
    sources = {key: file_label for key in file_values}
    sources |= {key: f"environment variable {env_name(key)}" for key in env_values}
    sources |= {key: f"flag --{key.replace('_', '-')}" for key in flag_values}
    try:
        settings = Settings(**{**file_values, **env_values, **flag_values})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, sources, file_label)) from None
    _check_agent(settings, sources.get("agent", "the default"))
    _check_combinations(settings, sources)
    settings._settings_file = file_label.split()[0]
    return settings


# Set by ralph for its agents, not settings; a nested ralph inherits them.
AGENT_VARIABLES = frozenset(
    {
        "RALPH_TASK_ID",
        "RALPH_ATTEMPT",
        "RALPH_PROMPT_FILE",
        "RALPH_LEARNINGS_FILE",
        "RALPH_QUESTION_FILE",
        "RALPH_WORKER",
    }
)


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``RALPH_<KEY>`` variables give (the one place they are read); list and
    table settings are written as JSON.

    A ``RALPH_`` variable that names no setting is an error, so a misspelt one can't be
    silently ignored.
    """
    known = {env_name(key) for key in Settings.model_fields} | AGENT_VARIABLES
    unknown = sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        name = unknown[0]
        key = name[len(ENV_PREFIX) :].lower()
        if name.upper() in known:
            raise SettingsError(f"{key}: write the variable as {name.upper()}, not {name}")
        raise SettingsError(f"{key}: unknown setting (in environment variable {name})")
    values: dict[str, Any] = {}
    for key, field in Settings.model_fields.items():
        name = env_name(key)
        if name not in environ:
            continue
        raw = environ[name]
        origin = typing.get_origin(field.annotation)
        if origin in (list, dict):
            values[key] = _json_value(key, name, raw, origin)
        else:
            values[key] = raw
    return values


_JSON_EXAMPLES: dict[type, tuple[str, str]] = {
    list: ("a JSON list", '["make test"]'),
    dict: ("a JSON object", '{"KEY": "value"}'),
}


def _json_value(key: str, name: str, raw: str, kind: type) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, kind):
        what, example = _JSON_EXAMPLES[kind]
        raise SettingsError(
            f"{key}: environment variable {name} must be {what}, "
            f"e.g. {name}='{example}': got {_shown(raw)}"
        )
    return value


def _check_combinations(settings: Settings, sources: Mapping[str, str]) -> None:
    """Raise SettingsError for settings that don't work together, naming both."""

    def where(key: str) -> str:
        return sources.get(key, "the default")

    if settings.network == "off" and settings.sandbox == "none":
        raise SettingsError(
            f'network = "off" ({where("network")}) needs sandbox = "bwrap" (sandbox is '
            f'"none", from {where("sandbox")}): without a sandbox ralph can\'t take the '
            "network away"
        )
    if settings.sandbox_paths and settings.sandbox == "none":
        raise SettingsError(
            f'sandbox_paths ({where("sandbox_paths")}) needs sandbox = "bwrap" '
            f"(sandbox from {where('sandbox')})"
        )
    if settings.queue is None and "stall_timeout" in sources:
        raise SettingsError(
            f"stall_timeout ({where('stall_timeout')}) means nothing without queue "
            "(set queue to share a backlog through PostgreSQL)"
        )


def _check_agent(settings: Settings, agent_source: str) -> None:
    """Raise SettingsError when the chosen agent lacks what it needs."""
    if settings.agent == "command" and not (settings.agent_command or "").strip():
        raise SettingsError(
            f'agent_command: required when agent = "command" (agent from {agent_source})'
        )
    if settings.agent == "scripted" and settings.agent_script is None:
        raise SettingsError(
            f'agent_script: required when agent = "scripted" (agent from {agent_source})'
        )


def _describe(exc: ValidationError, sources: Mapping[str, str], file_label: str) -> str:
    lines = []
    for error in exc.errors()[:10]:
        key = _cut(".".join(str(part) for part in error["loc"]) or "settings", 100)
        top = str(error["loc"][0]) if error["loc"] else ""
        source = sources.get(top, file_label)
        if error["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting (in {source})")
        elif error["type"] == "missing":
            lines.append(f"{key}: required, no default (set it in {file_label})")
        else:
            message = _cut(str(error["msg"]).removeprefix("Value error, "))
            lines.append(f"{key}: {message}: got {_shown(error.get('input'))} (from {source})")
    return "; ".join(lines)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def _shown(value: object) -> str:
    """A bounded ``repr`` of a bad value: the message names it without repeating all of it."""
    return _SHORT.repr(value)


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
