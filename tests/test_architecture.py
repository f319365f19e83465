"""The code's shape: layers point down, git stays in vcs, functions take few positional args."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

RALPH = Path(__file__).resolve().parent.parent / "ralph"


def modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in RALPH.rglob("*.py")]


def test_import_linter_contracts_hold() -> None:
    """import-linter's contracts (pyproject.toml) hold: every layer imports only those below."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports)], cwd=RALPH.parent, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitpython_is_imported_only_by_vcs() -> None:
    """Only the vcs package talks to GitPython."""
    importers = set()
    for path, tree in modules():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name == "git" or name.startswith("git.") for name in names):
                importers.add(path.relative_to(RALPH).parts[0])
    assert importers == {"vcs"}


def test_click_is_imported_only_by_the_cli() -> None:
    """Commands live in the cli package; the layers below it don't know about click."""
    importers = {
        path.relative_to(RALPH).parts[0]
        for path, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Import) and any(a.name == "click" for a in node.names)
    }
    assert importers == {"cli"}
