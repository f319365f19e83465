"""Receipts: each task commit says what it cost, and the trailers parse back."""

from __future__ import annotations

import json

import pytest
from conftest import Project

from ralph.vcs.receipts import Receipt


def test_receipt_is_read_back_from_a_real_commit(project: Project) -> None:
    """A task that took two attempts carries attempts, agent, times, tokens and cost; the
    scripted agent gets no model, so none is recorded."""
    report = {"ralph_report": {"input_tokens": 1000, "output_tokens": 50, "cost_usd": 0.25}}
    project.spec("task")
    project.configure(checks=["sleep 0.1; test -f ok.txt"], model="test-model")
    project.attempts(
        "task",
        {"steps": [{"print": json.dumps(report)}, {"write": "wrong.txt", "content": "x\n"}]},
        {"steps": [{"print": json.dumps(report)}, {"write": "ok.txt", "content": "x\n"}]},
    )
    project.commit()
    project.ralph("run", "--once", check_code=0)
    receipt = Receipt.from_message(project.git("log", "-1", "--format=%B"))
    assert receipt is not None
    assert (receipt.task, receipt.attempts, receipt.agent, receipt.model) == (
        "task",
        2,
        "scripted",
        None,
    )
    assert (receipt.input_tokens, receipt.output_tokens, receipt.cost_usd) == (2000, 100, 0.5)
    assert receipt.agent_seconds > 0 and receipt.check_seconds > 0
    trailers = project.git("log", "-1", "--format=%(trailers:key=Ralph-Cost-USD,valueonly)")
    assert trailers.strip() == "0.5000"


@pytest.mark.parametrize(
    "receipt",
    [
        Receipt("a", 1, "claude"),
        Receipt("api/login", 3, "codex", "gpt-5.5", 12.5, 3.5, 100, 20, 0.0123),
    ],
)
def test_receipt_round_trips_through_trailers(receipt: Receipt) -> None:
    """Trailers written from a receipt parse back to the same receipt."""
    message = "Subject\n\n" + "".join(f"{k}: {v}\n" for k, v in receipt.trailers().items())
    assert Receipt.from_message(message) == receipt


def test_non_task_commit_has_no_receipt() -> None:
    """A commit without a Ralph-Task trailer (a person's, or learnings) has no receipt."""
    assert Receipt.from_message("Fix typo\n\nRalph-Learnings: a\n") is None
