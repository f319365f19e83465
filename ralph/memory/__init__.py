"""The memory file (AGENTS.md) and the learnings agents leave in it."""
