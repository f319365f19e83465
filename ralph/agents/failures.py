"""Reading an agent's failure: usage limits, outages and bad credentials, from its output.

Every CLI words them differently; the presets parse their structured output first and
fall back on these patterns, applied only to the end of the output of a failed run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ralph.outcome import Reason

# Phrases the CLIs and model APIs print, not bare numbers or words: a failed run's output
# also holds the project's own test output ("401 passed", test_rate_limit.py), and a
# wrong class here stops the run (auth) or retries an attempt for hours (limits).
_STATUS = r"(?:(?:status(?: code)?:?|error:?|api error:?|http/?[\d.]*)\s*\(?|\()"
_AUTH = re.compile(
    r"invalid api key|incorrect api key|not logged in|please run /login|authentication_error"
    r"|authentication_failed|failed to authenticate|oauth token has expired"
    rf"|{_STATUS}40[13]\b|\b401 unauthorized|ProviderAuthError|not able to authenticate you"
    r"|permission was denied\. check your api key|must specify the \w+_API_KEY"
    r"|please set an auth method|credit balance is too low|out of (?:free )?credits"
    r"|billing_error|missing environment variable: `?\w*(?:KEY|TOKEN)",
    re.IGNORECASE,
)
_LIMIT = re.compile(
    r"usage limit|hit your (?:\w+ )?limit|limit reached|rate limit exceeded|rate_limit_error"
    rf"|rate_limit_exceeded|rate limited you|{_STATUS}429\b|\b429 too many requests"
    r"|too many requests|resource_exhausted|exceeded your current quota|quota exceeded"
    r"|exhausted your (?:\w+ )?(?:quota|capacity)|free usage exceeded|FreeUsageLimitError",
    re.IGNORECASE,
)
_OUTAGE = re.compile(
    r"overloaded_error|is overloaded|provider is overloaded|overloaded\. this is a server-side"
    rf"|{_STATUS}(?:50[0234]|529)\b|\b(?:500 internal server error|502 bad gateway"
    r"|503 service unavailable|504 gateway timeout|529 overloaded)|internal server error\b"
    r"|api error \(connection error|fetch failed|econnreset|econnrefused|etimedout"
    r"|servers are down|no capacity available|capacity_exhausted"
    r"|timed out without returning|stream disconnected|error sending request"
    r"|experiencing high demand",
    re.IGNORECASE,
)


def classify_text(text: str) -> Reason | None:
    """The failure class the end of a failed run's output points to, if any."""
    for pattern, failure in (
        (_AUTH, Reason.AUTH),
        (_LIMIT, Reason.USAGE_LIMIT),
        (_OUTAGE, Reason.API_OUTAGE),
    ):
        if pattern.search(text):
            return failure
    return None


def classify_status(status: int | None) -> Reason | None:
    """The failure class of an HTTP status an agent reports for its model API."""
    if status in (401, 403):
        return Reason.AUTH
    if status == 429:
        return Reason.USAGE_LIMIT
    if status is not None and (status >= 500 or status == 408):
        return Reason.API_OUTAGE
    return None


_EPOCH = re.compile(r"limit reached\|(\d{9,11})")
_UNITS = r"(?:ms|milliseconds?|days?|d|hours?|h|minutes?|mins?|m|seconds?|secs?|s)(?![a-z])"
_RELATIVE = re.compile(
    rf"(?:reset after|retry in|retry after|try again in)\s+((?:\d+(?:\.\d+)?\s*{_UNITS}\s*)+)",
    re.IGNORECASE,
)
_UNIT = re.compile(rf"(\d+(?:\.\d+)?)\s*({_UNITS})", re.IGNORECASE)
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
    if unit == "ms" or unit.startswith("milli"):
        return 0.001
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
