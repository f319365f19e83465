"""OpenTelemetry spans: checked in memory; nothing imported or changed when tracing is off."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import anyio
import pytest
from conftest import Project

from ralph import agents
from ralph.backlog.state import StateStore
from ralph.engine import loop
from ralph.engine.worker import Run
from ralph.observe.telemetry import EventLog
from ralph.observe.tracing import spans_from_environment
from ralph.runtime.processes import Stop
from ralph.settings import load_settings
from ralph.vcs import repo
from ralph.vcs.gitenv import Git, GitEnv, records_dir

memory_exporter = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")


def run_in_process(project: Project, exporter: Any) -> int:
    """Run `ralph run --once` in this process with spans going to ``exporter``."""
    settings = load_settings(project.root, {}, {})
    records = records_dir(project.root, os.environ)
    git_env = GitEnv.snapshot(project.root, dict(os.environ), records / "runs" / "traced")
    the_run = Run(
        root=project.root,
        settings=settings,
        agent=agents.make_agent(settings, project.root),
        env=dict(os.environ),
        events=EventLog(project.root / ".ralph" / "events.jsonl", "run-traced"),
        state=StateStore(records),
        stop=Stop(),
        branch=repo.current_branch(project.root),
        git=Git(project.root, git_env),
        spans=spans_from_environment({}, exporter=exporter),
    )
    repo.ensure_excluded(project.root)

    async def main() -> int:
        await loop.prepare(the_run)
        return await loop.run(the_run, loop.RunOptions(once=True))

    return anyio.run(main)


def test_spans_nest_run_task_attempt_agent_checks_commit(project: Project) -> None:
    """One task gives run > task > attempt > (agent, each check, commit), with attributes."""
    project.spec("greet")
    project.configure(checks=["true", "test -f hello.txt"])
    report = '{"ralph_report": {"input_tokens": 12, "output_tokens": 3, "cost_usd": 0.01}}'
    project.attempts(
        "greet", {"steps": [{"print": report}, {"write": "hello.txt", "content": "hi\n"}]}
    )
    project.commit()
    exporter = memory_exporter.InMemorySpanExporter()
    assert run_in_process(project, exporter) == 0
    spans = {span.name: span for span in exporter.get_finished_spans()}
    checks = [span for span in exporter.get_finished_spans() if span.name == "ralph.check"]
    assert set(spans) == {
        "ralph.run",
        "ralph.task",
        "ralph.attempt",
        "ralph.agent",
        "ralph.check",
        "ralph.commit",
    }
    assert len(checks) == 2

    def parent(name: str) -> int | None:
        return spans[name].parent.span_id if spans[name].parent else None

    assert parent("ralph.run") is None
    assert parent("ralph.task") == spans["ralph.run"].context.span_id
    assert parent("ralph.attempt") == spans["ralph.task"].context.span_id
    attempt_id = spans["ralph.attempt"].context.span_id
    assert parent("ralph.agent") == parent("ralph.commit") == attempt_id
    assert all(check.parent and check.parent.span_id == attempt_id for check in checks)
    agent = spans["ralph.agent"].attributes or {}
    assert (agent["ralph.agent"], agent["ralph.exit_code"], agent["ralph.input_tokens"]) == (
        "scripted",
        0,
        12,
    )
    assert agent["ralph.cost_usd"] == 0.01
    commit = spans["ralph.commit"].attributes or {}
    assert commit["ralph.commit"] == project.head()
    assert (spans["ralph.task"].attributes or {})["ralph.status"] == "done"
    assert [c.attributes["ralph.command"] for c in checks if c.attributes] == [
        "true",
        "test -f hello.txt",
    ]


def test_nothing_is_imported_when_tracing_is_off(project: Project) -> None:
    """Without OTEL_EXPORTER_OTLP_ENDPOINT a whole run never imports opentelemetry."""
    project.spec("greet")
    project.attempts("greet", {"steps": [{"write": "hello.txt", "content": "hi\n"}]})
    project.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "ralph",
            "-C",
            str(project.root),
            "run",
            "--once",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "import time:" in result.stderr
    assert "opentelemetry" not in result.stderr


def test_missing_extra_turns_tracing_off_with_a_warning() -> None:
    """With the endpoint set but the extra not installed, spans are no-ops (no crash)."""
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from ralph.observe.telemetry import configure_logging; configure_logging('json')\n"
        "from ralph.observe.tracing import spans_from_environment\n"
        "spans = spans_from_environment({'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://127.0.0.1:9'})\n"
        "print(type(spans).__name__)\n"
        "with spans.span('x', a=1) as annotate: annotate(b=2)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "NoSpans"
    assert "ralphd[otel]" in result.stderr
