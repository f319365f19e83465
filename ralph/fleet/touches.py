"""Whether two tasks' ``touches`` could match one path: the engine's scheduling rule."""

from __future__ import annotations

from ralph.globs import conflicts, overlap

__all__ = ["conflicts", "overlap"]
