"""``make demo``: the whole loop on a throwaway repository, offline, with the scripted agent.

Builds a small Python project with a backlog of four specs (one depends on another, one
passes only on its second attempt, one first tries to weaken a test), runs
``ralph run --once`` as a real process and prints what happened.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

OPS = '''\
"""Arithmetic for the demo project."""
'''

TEST_OPS = """\
import unittest

from calc import ops


class OpsTest(unittest.TestCase):
    def test_module_exists(self):
        self.assertTrue(hasattr(ops, "__doc__"))
"""

SPECS = {
    "add.md": """\
---
priority: 10
---
# Add an add() function

Add `add(a, b)` to `calc/ops.py` and a test for it in a new file under `tests/`.
""",
    "multiply.md": """\
---
priority: 20
depends_on: [add]
---
# Add a multiply() function

Add `multiply(a, b)` to `calc/ops.py`, with a test in a new file under `tests/`.
""",
    "divide.md": """\
---
priority: 30
depends_on: [add]
---
# Add a divide() function that refuses zero

Add `divide(a, b)` raising `ZeroDivisionError` with a clear message when `b` is 0.
""",
    "power.md": """\
---
priority: 40
depends_on: [multiply]
---
# Add power() built on multiply()
""",
}

TEST_ADD = """\
import unittest

from calc.ops import add


class AddTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)
"""

TEST_MULTIPLY = """\
import unittest

from calc.ops import multiply


class MultiplyTest(unittest.TestCase):
    def test_multiply(self):
        self.assertEqual(multiply(4, 5), 20)
"""

TEST_DIVIDE = """\
import unittest

from calc.ops import divide


class DivideTest(unittest.TestCase):
    def test_divide(self):
        self.assertEqual(divide(8, 2), 4)

    def test_zero(self):
        with self.assertRaises(ZeroDivisionError):
            divide(1, 0)
"""

POWER = (
    "\n\ndef power(a, n):\n    r = 1\n"
    "    for _ in range(n):\n        r = multiply(r, a)\n    return r\n"
)
ADD = "\n\ndef add(a, b):\n    return a + b\n"
MULTIPLY_WRONG = "\n\ndef multiply(a, b):\n    return a + b\n"
MULTIPLY = "\n\ndef multiply(a, b):\n    return a * b\n"
DIVIDE = (
    "\n\ndef divide(a, b):\n    if b == 0:\n"
    '        raise ZeroDivisionError("divide() by zero")\n    return a / b\n'
)


def script() -> dict[str, object]:
    """What the scripted agent does, attempt by attempt."""
    return {
        "tasks": {
            "add": {
                "attempts": [
                    {
                        "steps": [
                            {"append": "calc/ops.py", "content": ADD},
                            {"write": "tests/test_add.py", "content": TEST_ADD},
                            {"learn": "Tests run with `python -m unittest`; one file per feature."},
                        ]
                    }
                ]
            },
            "multiply": {
                "attempts": [
                    {
                        "steps": [
                            {"append": "calc/ops.py", "content": MULTIPLY_WRONG},
                            {"write": "tests/test_multiply.py", "content": TEST_MULTIPLY},
                        ]
                    },
                    {
                        "steps": [
                            {"expect_in_prompt": "AssertionError: 9 != 20"},
                            {"append": "calc/ops.py", "content": MULTIPLY},
                            {"write": "tests/test_multiply.py", "content": TEST_MULTIPLY},
                            {"learn": "calc/ops.py functions are plain; check operators twice."},
                        ]
                    },
                ]
            },
            "divide": {
                "attempts": [
                    {
                        "steps": [
                            {"append": "calc/ops.py", "content": DIVIDE},
                            {"write": "tests/test_ops.py", "content": "# tests removed\n"},
                            {"learn": "Existing tests are append-only here."},
                        ]
                    },
                    {
                        "steps": [
                            {"append": "calc/ops.py", "content": DIVIDE},
                            {"write": "tests/test_divide.py", "content": TEST_DIVIDE},
                        ]
                    },
                ]
            },
            "power": {
                "attempts": [
                    {
                        "steps": [
                            {
                                "append": "calc/ops.py",
                                "content": POWER,
                            },
                            {"learn": "Tests run with `python -m unittest`; one file per feature."},
                        ]
                    }
                ]
            },
        }
    }


def build(base: Path) -> Path:
    """Create the sample repository under ``base`` and return its root."""
    root = base / "calc-project"
    (root / "calc").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "specs").mkdir()
    (root / "calc" / "__init__.py").write_text("")
    (root / "calc" / "ops.py").write_text(OPS)
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_ops.py").write_text(TEST_OPS)
    (root / ".gitignore").write_text("__pycache__/\n")
    (root / "AGENTS.md").write_text("# AGENTS.md\n\nA tiny calculator package.\n")
    for name, text in SPECS.items():
        (root / "specs" / name).write_text(text)
    script_path = base / "agent-script.json.toml"
    script_path.write_text(_to_toml(script()))
    check = f"{shlex.quote(sys.executable)} -m unittest discover -s tests -t ."
    (root / "ralph.toml").write_text(
        'agent = "scripted"\n'
        f"agent_script = {json.dumps(str(script_path))}\n"
        f"checks = [{json.dumps(check)}]\n"
        'append_only = ["tests/**"]\n'
        'kill_grace = "2s"\n'
    )
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=demo", "-c", "user.email=demo@example.invalid", "commit", "-qm", "Start"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "ralph demo"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "demo@example.invalid"], cwd=root, check=True)
    return root


def _to_toml(value: object, key: str | None = None) -> str:
    """Inline-table TOML (TOML's basic strings accept JSON string escapes)."""
    if key is None:
        assert isinstance(value, dict)
        return "".join(f"{json.dumps(k)} = {_to_toml(v, k)}\n" for k, v in value.items())
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)} = {_to_toml(v, k)}" for k, v in value.items())
        return "{ " + inner + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_to_toml(v, key) for v in value) + "]"
    return json.dumps(value)


def report(root: Path) -> None:
    """Print what the run did: commits, attempts and their failures, learnings."""
    events = [
        json.loads(line)
        for line in (root / ".ralph" / "events.jsonl").read_text().splitlines()
        if line.strip()
    ]
    print("\n== What happened")
    for event in events:
        if event["event"] == "rolled_back":
            summary = event["summary"].splitlines()[0]
            print(f"  {event['task']:<9} attempt {event['attempt']}: rolled back ({summary})")
        elif event["event"] == "task_done":
            print(f"  {event['task']:<9} committed after {event['attempts']} attempt(s)")
        elif event["event"] == "task_failed":
            print(f"  {event['task']:<9} failed: {event['reason']}")
    print("\n== git log")
    log = subprocess.run(
        ["git", "log", "--reverse", "--format=  %h %s  [%(trailers:separator=%x2c )]"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    print(log.stdout.rstrip())
    print("\n== AGENTS.md")
    print("  " + (root / "AGENTS.md").read_text().rstrip().replace("\n", "\n  "))
    status = subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(root), "status"],
        capture_output=True,
        text=True,
    )
    print("\n== ralph status")
    print("  " + status.stdout.rstrip().replace("\n", "\n  "))
    for command in (["stats"], ["report"]):
        shown = subprocess.run(
            [sys.executable, "-m", "ralph", "-C", str(root), *command],
            capture_output=True,
            text=True,
        )
        print(f"\n== ralph {command[0]}")
        print("  " + shown.stdout.rstrip().replace("\n", "\n  "))


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="ralph-demo-"))
    root = build(base)
    print(f"== Sample repository: {root}")
    print("== Running: ralph run --once (scripted agent, offline)\n")
    run = subprocess.run(
        [sys.executable, "-m", "ralph", "-C", str(root), "--log-format", "console", "run", "--once"]
    )
    report(root)
    print(f"\nralph exited with {run.returncode}. The repository stays at {root} to look around.")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
