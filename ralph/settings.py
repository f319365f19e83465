"""Settings: ``ralph.toml`` (or ``[tool.ralph]``), then ``RALPH_*`` variables, then flags.

Built once by the CLI and passed down as one frozen object. A bad setting raises
SettingsError naming the key and where its value came from, before anything is touched.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from ralph.durations import parse_duration
from ralph.errors import SettingsError

Duration = Annotated[float, BeforeValidator(parse_duration)]
AgentName = Literal["claude", "codex", "gemini", "opencode", "amp", "aider", "scripted", "command"]

SETTINGS_FILE = "ralph.toml"
ENV_PREFIX = "RALPH_"


class Settings(BaseSettings):
    """Everything a user can set; see docs/settings.md for the reference."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

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

    max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts per task, each with a fresh agent."""

    attempt_timeout: Duration = 1800.0
    """How long one agent run may take before its process group is stopped."""

    check_timeout: Duration = 600.0
    """How long one check command may take."""

    kill_grace: Duration = 10.0
    """Time between SIGTERM and SIGKILL when stopping a process group."""

    protected: list[str] = Field(default_factory=list)
    """Extra globs the agent must not change (specs, ralph.toml and the memory file always are)."""

    append_only: list[str] = Field(default_factory=list)
    """Globs where the agent may add files but not change or delete existing ones."""

    poll_interval: Duration = 30.0
    """How often the idle daemon looks for new specs."""

    memory_budget: int = Field(default=32_768, ge=1024)
    """Bytes of the memory file carried in each prompt."""

    run_hooks: bool = False
    """Run the repository's git hooks on ralph's own commits (off: a planted hook never runs)."""

    @field_validator("checks")
    @classmethod
    def _checks_not_empty(cls, value: list[str]) -> list[str]:
        cleaned = [check.strip() for check in value]
        if not cleaned:
            raise ValueError("at least one check command is required")
        if any(not check for check in cleaned):
            raise ValueError("a check command is empty")
        return cleaned

    @field_validator("specs_dir", "memory_file")
    @classmethod
    def _relative(cls, value: Path) -> Path:
        if value.is_absolute() or ".." in value.parts:
            raise ValueError(f"{value} must be a path inside the repository")
        return value

    def protected_globs(self) -> list[str]:
        """The globs the agent may not touch: the built-in ones plus ``protected``."""
        builtin = [f"{self.specs_dir.as_posix()}/**", SETTINGS_FILE, self.memory_file.as_posix()]
        return builtin + [glob for glob in self.protected if glob not in builtin]

    def check_agent(self) -> None:
        """Raise SettingsError when the chosen agent lacks what it needs."""
        if self.agent == "command" and not (self.agent_command or "").strip():
            raise SettingsError('agent_command: required when agent = "command"')
        if self.agent == "scripted" and self.agent_script is None:
            raise SettingsError('agent_script: required when agent = "scripted"')


class _DictSource(PydanticBaseSettingsSource):
    """The settings file's table, already read, as a pydantic-settings source."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


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


def load_settings(
    root: Path, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings for the repository at ``root``; raise SettingsError on any problem."""
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    environ = os.environ if environ is None else environ
    file_data, file_label = read_settings_file(root)

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_data))

    def source_of(key: str) -> str:
        if key in flags:
            return f"flag --{key.replace('_', '-')}"
        if f"{ENV_PREFIX}{key.upper()}" in environ:
            return f"environment variable {ENV_PREFIX}{key.upper()}"
        return file_label

    saved = _swap_environ(environ)
    try:
        settings: Settings = _Loaded(**flags)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, source_of, file_label)) from None
    except PydanticSettingsError as exc:
        raise SettingsError(f"{exc} (lists are written as JSON, e.g. '[\"make test\"]')") from None
    finally:
        _swap_environ(saved)
    settings.check_agent()
    return settings


def _swap_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """Point os.environ at ``environ`` for pydantic-settings' env source; return the old one."""
    old = dict(os.environ)
    if environ is not os.environ:
        os.environ.clear()
        os.environ.update(environ)
    return old


def _describe(exc: ValidationError, source_of: Any, file_label: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "settings"
        top = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting (in {source_of(top)})")
        elif error["type"] == "missing":
            lines.append(f"{key}: required, no default (set it in {file_label})")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {message}: got {error.get('input')!r} (from {source_of(top)})")
    return "; ".join(lines)
