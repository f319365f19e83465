"""What each agent may take from the user's environment: variables and home folders.

The agent (and the checks) get an allowlisted environment: what any program needs (PATH,
HOME, locale, terminal, TMPDIR, proxies and CA bundles, where toolchains live), the
preset's own API-key and configuration variables, ralph's ``RALPH_*`` variables but the
queue and anything holding a URL or a token, then ``agent_env`` and ``pass_env``.
Everything else (cloud credentials, ``GITHUB_TOKEN``, ``SSH_AUTH_SOCK``, database URLs)
is withheld.

In the sandbox the home directory is empty but for the preset's own folders: its
configuration and state are writable (the CLIs write sessions and refresh tokens there), the
files in them that run code or steer the agent later, outside the sandbox (settings with
hooks, MCP servers, plugins, memory files), are read-only where they exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ralph.runtime.sandbox import Access, Bind


@dataclass(frozen=True)
class Needs:
    """What one preset needs from the user's environment and home directory."""

    variables: tuple[str, ...] = ()
    """Names or globs (``ANTHROPIC_*``) of the variables its CLI reads: keys, endpoints,
    configuration."""
    home: tuple[str, ...] = ()
    """Files and folders under the home directory it reads and writes."""
    home_readonly: tuple[str, ...] = ()
    """Inside those, what runs code or steers the agent in later sessions: read-only."""


BASE = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
)
"""What any program expects to find."""

NETWORK = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
)
"""Proxies and CA bundles: behind a corporate proxy nothing reaches the model API without them."""

TOOLCHAINS = (
    "VIRTUAL_ENV",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "CONDA_PREFIX",
    "JAVA_HOME",
    "GOPATH",
    "GOROOT",
    "GOMODCACHE",
    "GOCACHE",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "NVM_DIR",
    "NVM_BIN",
    "PNPM_HOME",
    "BUN_INSTALL",
    "DENO_DIR",
    "VOLTA_HOME",
)
"""Where toolchains live (paths, never secrets): the checks run ``make test`` with them."""

FILE_VARIABLES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "GOOGLE_APPLICATION_CREDENTIALS",
)
"""Variables naming a file the program reads: bound read-only into the sandbox when passed."""

# The keys of the model providers a multi-provider CLI (opencode, aider) can use.
_PROVIDERS = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_BASE",
    "OPENAI_ORG_ID",
    "OPENAI_ORGANIZATION",
    "OPENAI_PROJECT",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_API_KEY",
    "AZURE_API_BASE",
    "AZURE_API_VERSION",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GENERATIVE_AI_API_KEY",
    "OPENROUTER_API_KEY",
    "DEEPSEEK_API_KEY",
    "GROQ_API_KEY",
    "MISTRAL_API_KEY",
    "XAI_API_KEY",
    "COHERE_API_KEY",
    "TOGETHERAI_API_KEY",
    "FIREWORKS_API_KEY",
    "OLLAMA_HOST",
    "OLLAMA_API_BASE",
)

PRESETS: dict[str, Needs] = {
    "claude": Needs(
        variables=(
            "ANTHROPIC_*",  # API_KEY, AUTH_TOKEN, BASE_URL, MODEL, VERTEX_PROJECT_ID, ...
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
            "CLAUDE_CODE_USE_FOUNDRY",
            "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
            "CLAUDE_CODE_SKIP_VERTEX_AUTH",
            "CLAUDE_CODE_API_KEY_HELPER_TTL_MS",
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
            "CLAUDE_CONFIG_DIR",
            "AWS_BEARER_TOKEN_BEDROCK",
            "CLOUD_ML_REGION",
            "DISABLE_AUTOUPDATER",
            "DISABLE_TELEMETRY",
            "API_TIMEOUT_MS",
        ),
        home=(".claude", ".claude.json"),
        home_readonly=(
            ".claude/settings.json",
            ".claude/settings.local.json",
            ".claude/CLAUDE.md",
            ".claude/commands",
            ".claude/agents",
            ".claude/hooks",
            ".claude/plugins",
            ".claude/skills",
        ),
    ),
    "codex": Needs(
        variables=(
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OPENAI_ORG_ID",
            "OPENAI_ORGANIZATION",
            "OPENAI_PROJECT",
            "CODEX_HOME",
            "CODEX_SQLITE_HOME",
            "CODEX_API_KEY",
            "CODEX_ACCESS_TOKEN",
            "CODEX_CA_CERTIFICATE",
            "AZURE_OPENAI_API_KEY",
        ),
        home=(".codex",),
        home_readonly=(
            ".codex/config.toml",
            ".codex/AGENTS.md",
            ".codex/AGENTS.override.md",
            ".codex/prompts",
            ".codex/rules",
            ".codex/skills",
        ),
    ),
    "gemini": Needs(
        variables=(
            "GEMINI_*",  # GEMINI_API_KEY, GEMINI_MODEL, GEMINI_CLI_* ...
            "GOOGLE_API_KEY",
            "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_GENAI_USE_GCA",
            "GOOGLE_CLOUD_PROJECT",
            "GOOGLE_CLOUD_LOCATION",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_GEMINI_BASE_URL",
            "GOOGLE_VERTEX_BASE_URL",
        ),
        home=(".gemini",),
        home_readonly=(
            ".gemini/settings.json",
            ".gemini/GEMINI.md",
            ".gemini/commands",
            ".gemini/extensions",
        ),
    ),
    "opencode": Needs(
        variables=("OPENCODE_*", *_PROVIDERS),
        home=(
            ".config/opencode",
            ".local/share/opencode",
            ".local/state/opencode",
            ".cache/opencode",
        ),
        home_readonly=(
            ".config/opencode/opencode.json",
            ".config/opencode/opencode.jsonc",
            ".config/opencode/AGENTS.md",
            ".config/opencode/plugin",
            ".config/opencode/plugins",
            ".config/opencode/agent",
            ".config/opencode/agents",
            ".config/opencode/command",
            ".config/opencode/commands",
            ".config/opencode/tool",
            ".config/opencode/tools",
        ),
    ),
    "amp": Needs(
        variables=("AMP_*",),
        home=(".config/amp", ".local/share/amp", ".cache/amp"),
        home_readonly=(".config/amp/settings.json", ".config/amp/AGENTS.md"),
    ),
    "aider": Needs(
        variables=("AIDER_*", *_PROVIDERS),
        home=(
            ".aider",
            ".aider.conf.yml",
            ".aider.model.settings.yml",
            ".aider.model.metadata.json",
        ),
        home_readonly=(
            ".aider.conf.yml",
            ".aider.model.settings.yml",
            ".aider.model.metadata.json",
        ),
    ),
    "command": Needs(),
    "scripted": Needs(),
}
"""Per preset. ``command`` and ``scripted`` need nothing of their own: ``pass_env`` and
``sandbox_paths`` say what a custom command needs."""

# ralph's own variables the agent never gets, whatever their name says.
_RALPH_WITHHELD = frozenset({"RALPH_QUEUE"})
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|KEY|APIKEY|URL|URI|DSN|AUTH)(?:_|$)"
)
_URL_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def needs(preset: str) -> Needs:
    """What ``preset`` needs; a preset ralph doesn't know needs nothing of its own."""
    return PRESETS.get(preset, Needs())


def allowlisted(
    environ: Mapping[str, str],
    preset: str,
    agent_env: Mapping[str, str],
    pass_env: Iterable[str],
) -> dict[str, str]:
    """The environment the agent and the checks get: the allowlisted part of ``environ``,
    then ``agent_env`` (set last, it wins). ``pass_env`` holds names or globs."""
    passed = {
        name: value for name, value in environ.items() if _passes(name, value, preset, pass_env)
    }
    passed.update(agent_env)
    return passed


def _passes(name: str, value: str, preset: str, pass_env: Iterable[str]) -> bool:
    if _matches(name, pass_env):
        return True
    if name.startswith("RALPH_"):
        return _ralph_variable_passes(name, value)
    return _matches(name, (*BASE, *NETWORK, *TOOLCHAINS, *needs(preset).variables))


def _ralph_variable_passes(name: str, value: str) -> bool:
    """ralph's own variables, but the queue and anything holding a URL or a token."""
    if name in _RALPH_WITHHELD or _SECRET_NAME.search(name[len("RALPH_") :]):
        return False
    return not _URL_VALUE.match(value.strip())


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


_KEY_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|KEY|APIKEY|AUTH)(?:_|$)"
)


def secret_values(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` that hold a key, token or password (by their names): what
    the secret scan looks for verbatim in a change (``SecretScanner.known``)."""
    return {name: value for name, value in env.items() if _KEY_NAME.search(name) and value}


@dataclass(frozen=True)
class EnvironmentReport:
    """What the agent gets and what it doesn't, by name only (for ``ralph doctor``)."""

    passed: tuple[str, ...]
    withheld: tuple[str, ...]
    from_settings: tuple[str, ...]
    """Set by ``agent_env`` (their values come from the settings, not the environment)."""


def environment_report(
    environ: Mapping[str, str],
    preset: str,
    agent_env: Mapping[str, str],
    pass_env: Iterable[str],
) -> EnvironmentReport:
    """Names of the variables passed to the agent and withheld from it; never a value."""
    patterns = tuple(pass_env)
    passed = allowlisted(environ, preset, {}, patterns)
    return EnvironmentReport(
        passed=tuple(sorted(passed)),
        withheld=tuple(sorted(name for name in environ if name not in passed)),
        from_settings=tuple(sorted(agent_env)),
    )


def home_binds(
    preset: str,
    home: Path,
    environ: Mapping[str, str],
    sandbox_paths: Mapping[str, Access] | None = None,
) -> tuple[Bind, ...]:
    """The sandbox's binds for ``preset``: its folders under ``home`` (writable), the files in
    them kept read-only, files named by passed variables (CA bundles, Google credentials;
    read-only), then ``sandbox_paths`` (``~/`` is the home directory), which win.

    ``CLAUDE_CONFIG_DIR``, ``CODEX_HOME`` and ``XDG_*_HOME`` move the folders and are
    followed. Missing paths are kept: bwrap skips them.
    """
    wanted = needs(preset)
    binds: list[Bind] = []
    for relative in wanted.home:
        binds.append(Bind(_relocated(relative, home, environ), "rw"))
    for relative in wanted.home_readonly:
        binds.append(Bind(_relocated(relative, home, environ), "ro"))
    for name in FILE_VARIABLES:
        value = environ.get(name, "")
        if value.startswith("/"):
            binds.append(Bind(Path(value), "ro"))
    for path, access in (sandbox_paths or {}).items():
        binds.append(Bind(expand_home(path, home), access))
    return tuple(binds)


def expand_home(path: str, home: Path) -> Path:
    """``~/x`` and ``~`` under ``home``; an absolute path as it is."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return home / path[2:]
    return Path(path)


# Variables that move a preset's folder away from the home directory.
_MOVED = (
    (".claude.json", "CLAUDE_CONFIG_DIR", ".claude.json"),
    (".claude", "CLAUDE_CONFIG_DIR", ""),
    (".codex", "CODEX_HOME", ""),
    (".config", "XDG_CONFIG_HOME", ""),
    (".local/share", "XDG_DATA_HOME", ""),
    (".local/state", "XDG_STATE_HOME", ""),
    (".cache", "XDG_CACHE_HOME", ""),
)


def _relocated(relative: str, home: Path, environ: Mapping[str, str]) -> Path:
    for prefix, variable, keep in _MOVED:
        moved = environ.get(variable, "")
        if not moved.startswith("/"):
            continue
        if relative == prefix:
            return Path(moved) / keep if keep else Path(moved)
        if relative.startswith(prefix + "/"):
            return Path(moved) / relative[len(prefix) + 1 :]
    return home / relative
