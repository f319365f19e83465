"""The prompt one attempt's agent gets: the task, the memory, the last failure, the rules."""

from __future__ import annotations

from dataclasses import dataclass

from ralph.backlog.specs import Spec


@dataclass(frozen=True)
class PromptContext:
    """Everything the prompt is built from."""

    spec: Spec
    attempt: int
    max_attempts: int
    memory: str
    memory_file: str
    last_failure: str
    protected: list[str]
    append_only: list[str]
    checks: list[str]


def build_prompt(ctx: PromptContext) -> str:
    """Markdown for the agent: task first, then memory, last failure and rules."""
    parts = [
        f"# Task {ctx.spec.id}: {ctx.spec.title}",
        f"Attempt {ctx.attempt} of {ctx.max_attempts}. Spec file: {ctx.spec.path}",
        ctx.spec.body.strip(),
    ]
    if ctx.last_failure:
        parts += [
            "## Why the previous attempt failed",
            "A fresh agent tried this task before you and its work was rolled back. "
            "Avoid repeating the same mistake.",
            ctx.last_failure.strip(),
        ]
    if ctx.memory.strip():
        parts += [f"## Project memory ({ctx.memory_file})", ctx.memory.strip()]
    parts += ["## Rules", _rules(ctx)]
    return "\n\n".join(parts) + "\n"


def _rules(ctx: PromptContext) -> str:
    checks = "\n".join(f"  - `{check}`" for check in ctx.checks)
    protected = ", ".join(f"`{glob}`" for glob in ctx.protected)
    rules = [
        "- Do this one task and nothing else. Leave other tasks' specs alone.",
        "- Do not commit, amend, reset, stash or switch branches: leave your changes in the "
        "working tree. The runner commits them only if every check passes.",
        f"- Do not change these protected paths: {protected}. Changing one fails the attempt.",
    ]
    if ctx.append_only:
        globs = ", ".join(f"`{glob}`" for glob in ctx.append_only)
        rules.append(
            f"- You may add new files under {globs}, but not change or delete existing ones."
        )
    rules += [
        f"- These checks must pass, run by the runner from the repository root:\n{checks}",
        "- Write what the next agent should know (conventions, pitfalls, where things live) "
        "as short markdown bullets to the file named in $RALPH_LEARNINGS_FILE. "
        f"Do not edit {ctx.memory_file} yourself.",
    ]
    return "\n".join(rules)


def failure_summary(what: str, output_tail: str, limit: int = 3000) -> str:
    """A short account of a failed attempt: what failed and the end of its output."""
    tail = output_tail[-limit:].strip()
    if not tail:
        return what
    fence = "````" if "```" in tail else "```"
    return f"{what}\nEnd of its output:\n{fence}\n{tail}\n{fence}"
