"""The engine: the loop, one attempt, the gate, recovery and the prompt."""
