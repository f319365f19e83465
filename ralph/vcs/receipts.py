"""Receipts: what a task's commit cost, written as trailers so git history can answer.

``git log --format='%(trailers)'`` shows, per task commit, the attempts used, the agent
and model, the time spent in the agent and in checks over all attempts, and the tokens
and cost where the agent reported them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TASK = "Ralph-Task"
ATTEMPT = "Ralph-Attempt"
AGENT = "Ralph-Agent"
MODEL = "Ralph-Model"
AGENT_SECONDS = "Ralph-Agent-Seconds"
CHECK_SECONDS = "Ralph-Check-Seconds"
TOKENS = "Ralph-Tokens"
COST = "Ralph-Cost-USD"

_TRAILER = re.compile(r"^(Ralph-[A-Za-z-]+):\s*(.*)$")
_TOKENS = re.compile(r"^(\d+) in, (\d+) out$")


@dataclass(frozen=True)
class Receipt:
    """The cost of one task, over every attempt it took."""

    task: str
    attempts: int
    agent: str
    model: str | None = None
    agent_seconds: float = 0.0
    check_seconds: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None

    def trailers(self) -> dict[str, str]:
        """The commit trailers, in a stable order; unknown figures are left out."""
        trailers = {TASK: self.task, ATTEMPT: str(self.attempts), AGENT: self.agent}
        if self.model:
            trailers[MODEL] = self.model
        trailers[AGENT_SECONDS] = f"{self.agent_seconds:.2f}"
        trailers[CHECK_SECONDS] = f"{self.check_seconds:.2f}"
        if self.input_tokens is not None or self.output_tokens is not None:
            trailers[TOKENS] = f"{self.input_tokens or 0} in, {self.output_tokens or 0} out"
        if self.cost_usd is not None:
            trailers[COST] = f"{self.cost_usd:.4f}"
        return trailers

    @classmethod
    def from_message(cls, message: str) -> Receipt | None:
        """The receipt in a commit message, or None if it is not a ralph task commit."""
        found = {}
        for line in message.splitlines():
            match = _TRAILER.match(line.strip())
            if match:
                found[match.group(1)] = match.group(2).strip()
        if TASK not in found:
            return None
        tokens = _TOKENS.match(found.get(TOKENS, ""))
        cost = found.get(COST)
        return cls(
            task=found[TASK],
            attempts=int(found.get(ATTEMPT, "1")),
            agent=found.get(AGENT, ""),
            model=found.get(MODEL),
            agent_seconds=float(found.get(AGENT_SECONDS, "0")),
            check_seconds=float(found.get(CHECK_SECONDS, "0")),
            input_tokens=int(tokens.group(1)) if tokens else None,
            output_tokens=int(tokens.group(2)) if tokens else None,
            cost_usd=float(cost) if cost else None,
        )
