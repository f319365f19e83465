"""The gate: one decision on an attempt's change, made by the runner, not the agent.

First what changed (protected paths, append-only paths, nothing at all), then every
check, each in the repository root within ``check_timeout``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ralph.engine.prompt import failure_summary
from ralph.engine.secrets import Finding as SecretFinding
from ralph.globs import matches
from ralph.observe.tracing import NoSpans, Spans
from ralph.outcome import Reason
from ralph.runtime.processes import ProcessResult, Stop, run_in_group
from ralph.vcs.trees import GITLINK, SYMLINK, Entry


@dataclass(frozen=True)
class FailedCheck:
    """The check that failed an attempt: its command, how it ended, where its output is."""

    command: str
    exit_code: int | None
    """None when it ran past the check timeout or was stopped."""
    log_path: Path


@dataclass(frozen=True)
class Verdict:
    """Why an attempt can't be committed: a reason for telemetry, a summary for people and
    the next agent, and for a failed check, which one."""

    reason: Reason
    summary: str
    check: FailedCheck | None = None
    retry_at: datetime | None = None
    detail: str = ""
    """The last line the agent printed, for a failure of the agent itself."""
    secrets: tuple[SecretFinding, ...] = ()
    """For a secret in the change: where each one is (never the value)."""

    @property
    def headline(self) -> str:
        """The first line of the summary: what failed, without the output."""
        return self.summary.splitlines()[0] if self.summary else self.reason.value


@dataclass(frozen=True)
class CheckResult:
    command: str
    outcome: str
    exit_code: int | None
    duration: float
    tail: str
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.outcome == "exited" and self.exit_code == 0


def judge_entries(
    entries: Sequence[Entry],
    *,
    protected: Sequence[str],
    append_only: Sequence[str],
    allow_empty: bool,
    touches: Sequence[str] = (),
    allow_nested_repos: bool = False,
    symlink_out: Callable[[Entry], bool] | None = None,
) -> Verdict | None:
    """A Verdict when the change itself breaks a rule, else None."""
    touched = sorted(entry.path for entry in entries if matches(entry.path, protected))
    if touched:
        return Verdict(
            Reason.PROTECTED, f"The attempt changed protected paths: {', '.join(touched)}"
        )
    rewritten = sorted(
        f"{entry.path} ({'deleted' if entry.status == 'D' else 'modified'})"
        for entry in entries
        if entry.status != "A" and matches(entry.path, append_only)
    )
    if rewritten:
        return Verdict(
            Reason.APPEND_ONLY,
            "The attempt changed existing files in append-only paths "
            f"(only new files may be added there): {', '.join(rewritten)}",
        )
    outside = sorted(
        entry.path for entry in entries if touches and not matches(entry.path, touches)
    )
    if outside:
        return Verdict(
            Reason.OUTSIDE_TOUCHES,
            "The attempt changed paths outside the task's `touches` "
            f"({', '.join(touches)}), which the schedule relied on: {', '.join(outside[:20])}",
        )
    nested = sorted(entry.path for entry in entries if entry.new_mode == GITLINK)
    if nested and not allow_nested_repos:
        return Verdict(
            Reason.NESTED_REPO,
            "The attempt added nested git repositories, which a clone can't check out "
            f"(kept with the attempt): {', '.join(nested)}. Add the files themselves instead.",
        )
    if symlink_out is not None:
        leaving = sorted(
            entry.path for entry in entries if entry.new_mode == SYMLINK and symlink_out(entry)
        )
        if leaving:
            return Verdict(
                Reason.SYMLINK,
                f"The attempt added symlinks that point outside the repository: "
                f"{', '.join(leaving)}",
            )
    if not entries and not allow_empty:
        return Verdict(Reason.NO_CHANGES, "The agent finished without changing any file.")
    return None


async def run_checks(
    checks: Sequence[str],
    *,
    root: Path,
    env: Mapping[str, str],
    log_dir: Path,
    timeout: float,
    grace: float,
    stop: Stop,
    spans: Spans | None = None,
    wrap: Callable[[Sequence[str]], list[str]] = list,
) -> list[CheckResult]:
    """Run the checks in order until one fails (or a stop is requested); ``wrap`` puts each
    check's command line in the sandbox when there is one."""
    results = []
    for index, command in enumerate(checks, start=1):
        log_path = log_dir / f"check-{index}.log"
        with (spans or NoSpans()).span("ralph.check", command=command) as annotate:
            result = await _run_check(
                wrap(["/bin/sh", "-c", command]),
                log_path=log_path,
                root=root,
                env=env,
                timeout=timeout,
                grace=grace,
                stop=stop,
            )
            annotate(outcome=result.outcome, exit_code=result.exit_code, passed=result.ok)
        results.append(
            CheckResult(
                command, result.outcome, result.exit_code, result.duration, result.tail, log_path
            )
        )
        if not result.ok:
            break
    return results


async def _run_check(
    argv: list[str],
    *,
    log_path: Path,
    root: Path,
    env: Mapping[str, str],
    timeout: float,
    grace: float,
    stop: Stop,
) -> ProcessResult:
    return await run_in_group(
        argv,
        cwd=root,
        env=env,
        log_path=log_path,
        timeout=timeout,
        grace=grace,
        stop=stop,
        log_cap=2 * 1024 * 1024,
    )


def check_verdict(results: Sequence[CheckResult]) -> Verdict | None:
    """A Verdict for the first failed check, else None."""
    for result in results:
        if result.ok:
            continue
        if result.outcome == "timeout":
            what = f"Check `{result.command}` did not finish within the check timeout."
        elif result.exit_code == 127:
            what = f"Check `{result.command}` failed: command not found (exit 127)."
        else:
            what = f"Check `{result.command}` failed with exit code {result.exit_code}."
        check = FailedCheck(result.command, result.exit_code, result.log_path)
        return Verdict(Reason.CHECK_FAILED, failure_summary(what, result.tail), check)
    return None
