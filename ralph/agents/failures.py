"""Reading an agent's failure: usage limits, outages and bad credentials, from its output.

Every CLI words them differently; the presets parse their structured output first and
fall back on these patterns, applied only to the end of the output of a failed run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class FailureClass(StrEnum):
    """Why an agent run failed, as far as ralph can tell."""

    USAGE_LIMIT = "usage_limit"
    API_OUTAGE = "api_outage"
    AUTH = "auth"
    TIMEOUT = "timeout"
    CRASH = "crash"
    NO_CHANGES = "no_changes"


# Limits and outages are nobody's fault: they don't use up the task's attempts.
TRANSIENT = frozenset({FailureClass.USAGE_LIMIT, FailureClass.API_OUTAGE})

_AUTH = re.compile(
    r"invalid api key|not logged in|please run /login|authentication_error|authentication_failed"
    r"|failed to authenticate|oauth token has expired|\b401\b|unauthori[sz]ed|ProviderAuthError"
    r"|not able to authenticate|permission was denied\. check your api key"
    r"|must specify the \w+_API_KEY|please set an auth method|credit balance is too low"
    r"|out of (?:free )?credits|billing_error|missing bearer|no api key",
    re.IGNORECASE,
)
_LIMIT = re.compile(
    r"usage limit|hit your (?:\w+ )?limit|limit reached|rate[ _-]?limit|\b429\b|quota"
    r"|resource_exhausted|too many requests|free usage exceeded|try again in|reset after",
    re.IGNORECASE,
)
_OUTAGE = re.compile(
    r"overloaded|\b50[0234]\b|\b529\b|internal server error|service unavailable|bad gateway"
    r"|connection error|fetch failed|econnreset|econnrefused|etimedout|network error"
    r"|servers are down|no capacity available|capacity_exhausted|timed out without returning"
    r"|stream disconnected|error sending request|experiencing high demand",
    re.IGNORECASE,
)


def classify_text(text: str) -> FailureClass | None:
    """The failure class the end of a failed run's output points to, if any."""
    for pattern, failure in (
        (_AUTH, FailureClass.AUTH),
        (_LIMIT, FailureClass.USAGE_LIMIT),
        (_OUTAGE, FailureClass.API_OUTAGE),
    ):
        if pattern.search(text):
            return failure
    return None


def classify_status(status: int | None) -> FailureClass | None:
    """The failure class of an HTTP status an agent reports for its model API."""
    if status in (401, 403):
        return FailureClass.AUTH
    if status == 429:
        return FailureClass.USAGE_LIMIT
    if status is not None and (status >= 500 or status == 408):
        return FailureClass.API_OUTAGE
    return None


_EPOCH = re.compile(r"limit reached\|(\d{9,11})")
_RELATIVE = re.compile(
    r"(?:reset after|retry in|retry after|try again in)\s+"
    r"((?:\d+(?:\.\d+)?\s*(?:days?|d|hours?|h|minutes?|mins?|m|seconds?|secs?|s)\s*)+)",
    re.IGNORECASE,
)
_UNIT = re.compile(r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|h|minutes?|mins?|m|seconds?|secs?|s)")
_CLOCK = re.compile(
    r"resets?\s+(?:at\s+)?(?:(?P<month>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+at\s+)?"
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s*(?P<ampm>am|pm)\s*(?:\((?P<tz>[\w/+-]+)\))?",
    re.IGNORECASE,
)
_AT = re.compile(
    r"try again at\s+(?:(?P<month>[A-Z][a-z]{2})\w*\s+(?P<day>\d{1,2})(?:st|nd|rd|th)?,?\s+"
    r"(?P<year>\d{4})\s+)?(?P<hour>\d{1,2}):(?P<minute>\d{2})\s*(?P<ampm>am|pm)",
    re.IGNORECASE,
)
# A reset time a few minutes past means "just now", not "tomorrow at that time".
_JUST_PASSED = timedelta(minutes=10)
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def parse_reset(text: str, now: datetime) -> datetime | None:
    """When a usage limit resets, if the message says: an epoch, "in 2h5m" or "resets 10pm (TZ)"."""
    epoch = _EPOCH.search(text)
    if epoch:
        return datetime.fromtimestamp(int(epoch.group(1)), UTC)
    relative = _RELATIVE.search(text)
    if relative:
        seconds = sum(
            float(amount) * _unit_seconds(unit) for amount, unit in _UNIT.findall(relative.group(1))
        )
        return now + timedelta(seconds=seconds)
    clock = _CLOCK.search(text) or _AT.search(text)
    if clock:
        return _next_clock_time(clock, now)
    return None


def _unit_seconds(unit: str) -> float:
    unit = unit.lower()
    if unit.startswith("d"):
        return 86400.0
    if unit.startswith("h"):
        return 3600.0
    if unit.startswith("m"):
        return 60.0
    return 1.0


def _next_clock_time(match: re.Match[str], now: datetime) -> datetime | None:
    """The next such time of day (or that date); without a zone, the machine's local time."""
    named = match.groupdict().get("tz")
    try:
        zone = ZoneInfo(named) if named else now.astimezone().tzinfo or UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    hour = int(match.group("hour")) % 12 + (12 if match.group("ampm").lower() == "pm" else 0)
    local_now = now.astimezone(zone)
    target = local_now.replace(hour=hour, minute=int(match.group("minute") or 0), second=0)
    target = target.replace(microsecond=0)
    if match.group("month"):
        month = match.group("month")[:3].lower()
        if month not in _MONTHS:
            return None
        year = int(match.groupdict().get("year") or target.year)
        target = target.replace(
            year=year, month=_MONTHS.index(month) + 1, day=int(match.group("day"))
        )
        if target < local_now - _JUST_PASSED and not match.groupdict().get("year"):
            target = target.replace(year=target.year + 1)
    elif target < local_now - _JUST_PASSED:
        target += timedelta(days=1)
    return max(target, local_now).astimezone(UTC)
