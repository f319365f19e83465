"""`ralph init`: the files a repository needs, checks guessed from the repo, never an overwrite."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import git

WRITTEN = ("ralph.toml", "specs/example.md", "AGENTS.md")
# What `npm init -y` writes as the test script: it always fails.
NPM_PLACEHOLDER = 'echo "Error: no test specified" && exit 1'


def ralph(
    root: Path, *args: str, code: int | None = 0, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``ralph -C root ARGS`` (``path`` first on PATH) and check its exit code (None: any)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RALPH_")}
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(root), "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    return result


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh, empty git repository."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (including .git/info/exclude, but not the rest of .git)."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and (not relative.startswith(".git/") or relative == ".git/info/exclude"):
            files[relative] = path.read_bytes()
    return files


def settings_checks(root: Path) -> list[str]:
    """The checks list `ralph init` wrote into ralph.toml."""
    checks: list[str] = tomllib.loads((root / "ralph.toml").read_text())["checks"]
    return checks


def set_checks(root: Path, checks: list[str]) -> None:
    path = root / "ralph.toml"
    text = re.sub(r"(?m)^checks = .*$", f"checks = {json.dumps(checks)}", path.read_text())
    path.write_text(text)


def test_init_writes_the_files_and_excludes_ralph_dir(repo: Path) -> None:
    """In a fresh repo init writes ralph.toml, a disabled example, AGENTS.md and the exclude."""
    result = ralph(repo, "init")
    for relative in WRITTEN:
        assert (repo / relative).is_file(), relative
        assert relative in result.stdout
    assert "enabled: false" in (repo / "specs/example.md").read_text()
    assert "/.ralph/" in (repo / ".git/info/exclude").read_text().splitlines()
    assert not (repo / ".gitignore").exists()


def test_init_again_changes_nothing(repo: Path) -> None:
    """A second init leaves every file byte for byte as it was and says each was kept."""
    ralph(repo, "init")
    before = snapshot(repo)
    result = ralph(repo, "init")
    assert snapshot(repo) == before
    assert result.stdout.count("kept") == len(WRITTEN)
    assert "written" not in result.stdout


def test_init_never_overwrites_settings(repo: Path) -> None:
    """An existing ralph.toml (and AGENTS.md) is kept as is; the missing files are still written."""
    (repo / "ralph.toml").write_text('checks = ["make check"]\n')
    (repo / "AGENTS.md").write_text("# Ours\n")
    result = ralph(repo, "init")
    assert (repo / "ralph.toml").read_text() == 'checks = ["make check"]\n'
    assert (repo / "AGENTS.md").read_text() == "# Ours\n"
    assert (repo / "specs/example.md").is_file()
    assert re.search(r"ralph.toml.*kept", result.stdout)


@pytest.mark.parametrize(
    ("files", "checks"),
    [
        pytest.param(
            {"pyproject.toml": "[project]\nname = 'x'\n", "tests/test_x.py": ""},
            ["python -m pytest -q"],
            id="pytest",
        ),
        pytest.param(
            {"package.json": json.dumps({"scripts": {"test": "jest"}})}, ["npm test"], id="npm"
        ),
        pytest.param({"Cargo.toml": "[package]\nname = 'x'\n"}, ["cargo test"], id="cargo"),
        pytest.param({"go.mod": "module example.com/x\n"}, ["go test ./..."], id="go"),
        pytest.param({"Makefile": "all:\n\techo\n\ntest:\n\techo ok\n"}, ["make test"], id="make"),
        pytest.param({"package.json": json.dumps({"scripts": {}})}, [], id="npm-without-test"),
        pytest.param(
            {"package.json": json.dumps({"scripts": {"test": NPM_PLACEHOLDER}})},
            [],
            id="npm-init-placeholder",
        ),
        pytest.param({"Makefile": "all:\n\techo\n"}, [], id="make-without-test"),
        pytest.param({"pyproject.toml": "[project]\nname = 'x'\n"}, [], id="python-without-tests"),
        pytest.param({}, [], id="nothing"),
    ],
)
def test_init_guesses_checks(repo: Path, files: dict[str, str], checks: list[str]) -> None:
    """init guesses the checks from the repository's build files, or leaves the list empty."""
    for relative, content in files.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(content)
    ralph(repo, "init")
    assert settings_checks(repo) == checks


def test_validate_reports_missing_checks_after_init(repo: Path) -> None:
    """When init could guess no checks, `ralph validate` exits 1 naming the checks setting."""
    ralph(repo, "init")
    result = ralph(repo, "validate", code=1)
    assert "checks" in result.stdout + result.stderr


def test_init_outside_git_writes_files_and_says_to_git_init(tmp_path: Path) -> None:
    """Outside a git repository init still writes its files and tells the user to run git init."""
    root = tmp_path / "plain"
    root.mkdir()
    result = ralph(root, "init")
    for relative in WRITTEN:
        assert (root / relative).is_file(), relative
    assert "git init" in result.stdout + result.stderr
    assert not (root / ".git").exists()


def test_initialised_repo_validates_and_lists_the_example(repo: Path, tmp_path: Path) -> None:
    """After init and a real check, validate passes and status lists the example as disabled."""
    ralph(repo, "init")
    set_checks(repo, ["true"])
    bin_dir = tmp_path / "bin"  # init's default agent is claude: validate wants it on PATH
    bin_dir.mkdir()
    (bin_dir / "claude").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "claude").chmod(0o755)
    ralph(repo, "validate", path=bin_dir)
    tasks = json.loads(ralph(repo, "status", "--json").stdout)["tasks"]
    assert [(t["id"], t["state"]) for t in tasks] == [("example", "pending")]
    assert "disabled" in tasks[0]["reason"]
    assert re.search(r"(?m)^example\s+pending\b.*disabled", ralph(repo, "status").stdout)


def test_init_keeps_existing_specs(repo: Path) -> None:
    """When specs/ already holds specs, init adds no example to the backlog."""
    (repo / "specs").mkdir()
    (repo / "specs" / "mine.md").write_text("# Mine\n")
    result = ralph(repo, "init")
    assert sorted(p.name for p in (repo / "specs").iterdir()) == ["mine.md"]
    assert re.search(r"specs/.*kept", result.stdout)


def test_init_respects_settings_in_pyproject(repo: Path) -> None:
    """With settings in pyproject.toml [tool.ralph], init writes no ralph.toml to shadow them."""
    (repo / "pyproject.toml").write_text(
        "[project]\nname = 'x'\n\n[tool.ralph]\nchecks = [\"make check\"]\n"
        'agent = "command"\nagent_command = "true"\n'
    )
    (repo / "specs").mkdir()
    ralph(repo, "validate")
    ralph(repo, "init")
    assert not (repo / "ralph.toml").exists()
    ralph(repo, "validate")


def test_init_in_a_subdirectory_writes_at_the_repository_root(repo: Path) -> None:
    """`ralph init` run inside a subdirectory writes its files where `ralph run` looks: the root."""
    sub = repo / "src"
    sub.mkdir()
    ralph(sub, "init")
    for relative in WRITTEN:
        assert (repo / relative).is_file(), relative
    assert not (sub / "ralph.toml").exists()
