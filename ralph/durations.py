"""Durations as users write them: ``90s``, ``30m``, ``2h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_HINT = "use a number of seconds or e.g. 90s, 30m, 2h"


def parse_duration(value: object) -> float:
    """Return seconds for a duration; raise ValueError with the offending value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower())
    else:
        raise ValueError(f"bad duration {value!r}: {_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r}: must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be more than zero")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r}: {_HINT}")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way users write them (``1h30m``, ``45s``)."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def parse_deadline(text: str, now: datetime) -> datetime:
    """A deadline as a time of day (``06:00``, its next occurrence) or a duration (``6h``)."""
    text = text.strip()
    clock = _CLOCK.match(text)
    if clock:
        target = now.replace(hour=int(clock[1]), minute=int(clock[2]), second=0, microsecond=0)
        return target if target > now else target + timedelta(days=1)
    try:
        return now + timedelta(seconds=parse_duration(text))
    except (ValueError, OverflowError):
        raise ValueError(
            f"bad deadline {text!r}: use a time of day like 06:00 or a duration like 6h"
        ) from None
