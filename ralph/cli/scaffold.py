"""``ralph init``: the files a repository needs, written only where nothing exists yet.

The one exception is ``.gitattributes``: a line is appended to it, nothing in it is changed.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

SETTINGS_TEMPLATE = """\
# ralph settings: see docs/settings.md for every key.
agent = "claude"

# Every check must exit 0 before ralph commits an attempt.
checks = {checks}

specs_dir = "specs"
memory_file = "AGENTS.md"
max_attempts = 3
attempt_timeout = "30m"
check_timeout = "10m"

# Globs the agent may add files to but not change or delete existing ones in:
# the guard against an agent that makes checks pass by weakening the tests.
# append_only = ["tests/**"]
"""

EXAMPLE_SPEC = """\
---
# Every key is optional (docs/specs.md); this example stays out of the loop until you
# enable it.
id: example                 # default: the path under specs/ without .md
title: Describe one task    # default: the first "# " heading
priority: 100               # lower runs first
depends_on: []              # ids of tasks that must be done first
checks: []                  # extra check commands, run after the global ones
max_attempts: 3             # default: the max_attempts setting
timeout: 30m                # default: the attempt_timeout setting
allow_empty: false          # true: an attempt that changes nothing may pass
enabled: false
---
# Describe one task here

Say what should change and how to know it is done. One spec file is one task;
ralph gives it to a fresh agent, runs your checks, and commits only when they pass.
"""

MEMORY_TEMPLATE = """\
# AGENTS.md

Notes for the coding agents working on this repository: conventions, commands,
where things live. ralph appends what each agent learned under "Learnings".

## Learnings
"""


# Branches that each append learnings to AGENTS.md merge without a conflict: git keeps the
# lines of both sides (compaction merges any repeats later).
MEMORY_MERGE_LINE = "AGENTS.md merge=union"


def guess_checks(root: Path) -> list[str]:
    """Check commands inferred from the files in the repository; empty if none fit."""
    python = (root / "pyproject.toml").exists() or (root / "setup.py").exists()
    if python and ((root / "tests").is_dir() or (root / "test").is_dir()):
        return ["python -m pytest -q"]
    package = root / "package.json"
    if package.exists():
        try:
            scripts = json.loads(package.read_text(encoding="utf-8")).get("scripts", {})
        except ValueError:
            scripts = {}
        test = scripts.get("test") if isinstance(scripts, dict) else None
        # `npm init` writes a test script that always fails: that is no test at all.
        if isinstance(test, str) and "no test specified" not in test:
            return ["npm test"]
    if (root / "Cargo.toml").exists():
        return ["cargo test"]
    if (root / "go.mod").exists():
        return ["go test ./..."]
    makefile = root / "Makefile"
    if makefile.exists() and "\ntest:" in "\n" + makefile.read_text(errors="replace"):
        return ["make test"]
    return []


def _settings_in_pyproject(root: Path) -> bool:
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    tool = data.get("tool")
    return isinstance(tool, dict) and isinstance(tool.get("ralph"), dict)


def init_repository(root: Path) -> list[tuple[str, str]]:
    """Write the missing files; return (path, what happened) for each."""
    checks = guess_checks(root)
    rendered = (
        json.dumps(checks)
        if checks
        else '[]  # add the commands that must pass, e.g. ["make test"]'
    )
    files = {
        "ralph.toml": SETTINGS_TEMPLATE.format(checks=rendered),
        "specs/example.md": EXAMPLE_SPEC,
        "AGENTS.md": MEMORY_TEMPLATE,
    }
    report = []
    if _settings_in_pyproject(root):
        del files["ralph.toml"]
        report.append(("ralph.toml", "not written (settings are in pyproject.toml [tool.ralph])"))
    for relative, content in files.items():
        path = root / relative
        if relative.startswith("specs/") and any((root / "specs").rglob("*.md")):
            report.append(("specs/", "kept (already holds specs)"))
            continue
        if path.exists():
            report.append((relative, "kept (already exists)"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        report.append((relative, "written"))
    report.append((".gitattributes", _merge_memory_by_union(root / ".gitattributes")))
    return report


def _merge_memory_by_union(path: Path) -> str:
    """Add MEMORY_MERGE_LINE to ``path`` unless AGENTS.md already has a merge attribute there.

    A merge setting someone chose for AGENTS.md (union or another driver) is theirs to keep.
    """
    if not path.exists():
        path.write_text(MEMORY_MERGE_LINE + "\n", encoding="utf-8")
        return "written"
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if any(_sets_memory_merge(line) for line in text.splitlines()):
        return "unchanged (it already sets how AGENTS.md merges)"
    prefix = "" if not text or text.endswith("\n") else "\n"
    with path.open("a", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(f"{prefix}{MEMORY_MERGE_LINE}\n")
    return f"appended {MEMORY_MERGE_LINE}"


def _sets_memory_merge(line: str) -> bool:
    """Whether a .gitattributes line sets a merge attribute for AGENTS.md (``*.md`` counts)."""
    pattern, *attributes = line.split() or [""]
    names = (attribute.lstrip("-!").split("=")[0] for attribute in attributes)
    pattern = pattern.removeprefix("/")
    return "merge" in names and fnmatch.fnmatchcase("AGENTS.md", pattern)
