"""Reading an agent's failure: the class its words or HTTP status name, and when a limit resets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ralph.agents.failures import classify_status, classify_text, parse_reset
from ralph.outcome import Reason

AUTH = Reason.AUTH
LIMIT = Reason.USAGE_LIMIT
OUTAGE = Reason.API_OUTAGE

# 07:00 in New York, 09:00 in Recife, 13:00 in Warsaw, 21:00 in Tokyo.
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def local_time_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the machine's local time zone Asia/Tokyo (UTC+9, no daylight saving)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A UTC datetime."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# --- classify_text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Claude Code
        pytest.param("Invalid API key · Please run /login", AUTH, id="claude-invalid-key"),
        pytest.param("Not logged in · Please run /login", AUTH, id="claude-not-logged-in"),
        pytest.param(
            'API Error: 401 {"type":"error","error":{"type":"authentication_error","message":'
            '"OAuth token has expired. Please obtain a new token or refresh your existing '
            'token."}} · Please run /login',
            AUTH,
            id="claude-oauth-expired",
        ),
        pytest.param(
            "Failed to authenticate: OAuth session expired and could not be refreshed",
            AUTH,
            id="claude-headless-oauth",
        ),
        pytest.param(
            "Your credit balance is too low to access the Anthropic API.", AUTH, id="claude-credit"
        ),
        pytest.param(
            "You've hit your limit · resets 10pm (America/New_York)", LIMIT, id="claude-limit"
        ),
        pytest.param(
            "You've hit your weekly limit · resets 1am (America/Chicago) /login to switch to an "
            "API usage-billed account.",
            LIMIT,
            id="claude-weekly-limit-login-hint",
        ),
        pytest.param("Claude AI usage limit reached|1795489200", LIMIT, id="claude-legacy-limit"),
        pytest.param("5-hour limit reached ∙ resets 5:30am", LIMIT, id="claude-5-hour"),
        pytest.param("API Error: Request rejected (429)", LIMIT, id="claude-server-rate-limit"),
        pytest.param(
            'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":'
            '"Overloaded"}}',
            OUTAGE,
            id="claude-529-json",
        ),
        pytest.param(
            'API Error: 500 {"type":"error","error":{"type":"api_error","message":"Internal '
            'server error"}}',
            OUTAGE,
            id="claude-500",
        ),
        pytest.param("API Error (Connection error.)", OUTAGE, id="claude-connection"),
        pytest.param("TypeError (fetch failed)", OUTAGE, id="claude-fetch-failed"),
        pytest.param(
            "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try "
            "again in a moment. If it persists, check https://status.claude.com/.",
            OUTAGE,
            id="claude-529-prose",
        ),
        # Codex
        pytest.param(
            "unexpected status 401 Unauthorized: fake error 401, url: "
            "http://127.0.0.1:8080/v1/responses",
            AUTH,
            id="codex-401",
        ),
        pytest.param(
            "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
            "https://chatgpt.com/settings/usage to purchase more credits or try again at 11:01 PM.",
            LIMIT,
            id="codex-usage-limit",
        ),
        pytest.param("You’ve hit your usage limit. Try again later.", LIMIT, id="codex-no-reset"),
        pytest.param(
            "exceeded retry limit, last status: 429 Too Many Requests", LIMIT, id="codex-429"
        ),
        pytest.param(
            "Quota exceeded. Check your plan and billing details.", LIMIT, id="codex-quota"
        ),
        pytest.param(
            "We’re currently experiencing high demand, which may cause temporary errors.",
            OUTAGE,
            id="codex-500",
        ),
        pytest.param(
            "unexpected status 503 Service Unavailable: fake error 503, url: "
            "http://127.0.0.1:8080/v1/responses",
            OUTAGE,
            id="codex-503",
        ),
        pytest.param(
            "stream disconnected before completion: stream closed before response.completed",
            OUTAGE,
            id="codex-stream",
        ),
        # Gemini CLI
        pytest.param(
            "Please set an Auth method in your /root/.gemini/settings.json or specify one of the "
            "following environment variables before running: GEMINI_API_KEY, "
            "GOOGLE_GENAI_USE_VERTEXAI, GOOGLE_GENAI_USE_GCA",
            AUTH,
            id="gemini-no-auth",
        ),
        pytest.param(
            "When using Gemini API, you must specify the GEMINI_API_KEY environment variable.",
            AUTH,
            id="gemini-no-key",
        ),
        pytest.param(
            "You have exhausted your capacity on this model. Your quota will reset after 8h44m7s.",
            LIMIT,
            id="gemini-capacity",
        ),
        pytest.param(
            "[API Error: You have exhausted your daily quota on this model. "
            "(Status: RESOURCE_EXHAUSTED)]",
            LIMIT,
            id="gemini-daily-quota",
        ),
        pytest.param(
            "No capacity available for model gemini-3-flash-preview on the server",
            OUTAGE,
            id="gemini-no-capacity",
        ),
        # OpenCode
        pytest.param("ProviderAuthError Missing API key for anthropic.", AUTH, id="opencode-auth"),
        pytest.param(
            'Rate limit exceeded. Please try again later. {"type":"FreeUsageLimitError"}',
            LIMIT,
            id="opencode-free-usage",
        ),
        pytest.param(
            "Free usage exceeded, add credits https://opencode.ai/zen", LIMIT, id="opencode-zen"
        ),
        pytest.param("Provider is overloaded", OUTAGE, id="opencode-overloaded"),
        # Amp
        pytest.param("Out of free credits", AUTH, id="amp-credits"),
        # Aider
        pytest.param(
            "The API provider is not able to authenticate you. Check your API key.",
            AUTH,
            id="aider-auth",
        ),
        pytest.param(
            "Permission was denied. Check your API key and/or credentials.",
            AUTH,
            id="aider-permission",
        ),
        pytest.param(
            "The API provider has rate limited you. Try again later or check your quotas.",
            LIMIT,
            id="aider-rate-limit",
        ),
        pytest.param(
            "The API provider's servers are down or overloaded.", OUTAGE, id="aider-outage"
        ),
        pytest.param(
            "The API provider timed out without returning a response. They may be down or "
            "overloaded.",
            OUTAGE,
            id="aider-timeout",
        ),
        # Ordinary work and failures that are nobody's API
        pytest.param("All tests passed", None, id="tests-passed"),
        pytest.param("Done. Created hello.txt.", None, id="done"),
        pytest.param("Applied edit to src/app.py", None, id="applied-edit"),
        pytest.param("FAILED tests/test_cli.py::test_version - assert 1 == 0", None, id="pytest"),
        pytest.param(
            "Codex ran out of room in the model's context window. Start a new thread or clear "
            "earlier history before retrying.",
            None,
            id="context-window",
        ),
        pytest.param(
            "Error: Claude Code cannot be launched inside another Claude Code session.",
            None,
            id="nested-claude",
        ),
        pytest.param("", None, id="empty"),
        pytest.param(
            "1 failed, 401 passed in 3.20s",
            None,
            id="pytest-401-passed",
        ),
        pytest.param(
            "FAILED tests/test_server.py::test_error_page - assert 200 == 500",
            None,
            id="pytest-asserts-500",
        ),
        pytest.param(
            "FAILED tests/test_rate_limit.py::test_burst - assert 3 == 2",
            None,
            id="pytest-rate-limit-module",
        ),
    ],
)
def test_classify_text(text: str, expected: Reason | None) -> None:
    """Each CLI's words for bad credentials, limits and outages get their class; other text none."""
    assert classify_text(text) is expected


# --- classify_status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, AUTH),
        (403, AUTH),
        (429, LIMIT),
        (408, OUTAGE),
        (500, OUTAGE),
        (503, OUTAGE),
        (529, OUTAGE),
        (200, None),
        (400, None),
        (404, None),
        (None, None),
    ],
)
def test_classify_status(status: int | None, expected: Reason | None) -> None:
    """401/403 are credentials, 429 a limit, 408 and 5xx an outage; other statuses say nothing."""
    assert classify_status(status) is expected


# --- parse_reset ------------------------------------------------------------------------------

NEW_YORK_LIMIT = "You've hit your limit · resets 10pm (America/New_York)"
RECIFE_LIMIT = "You've hit your limit · resets Apr 23 at 4pm (America/Recife)"
CODEX_LIMIT = (
    "You’ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
    "https://chatgpt.com/settings/usage to purchase more credits or try again at {when}."
)


@pytest.mark.usefixtures("local_time_in_tokyo")
@pytest.mark.parametrize(
    ("text", "now", "expected"),
    [
        pytest.param(
            "Claude AI usage limit reached|1795489200", NOW, at(2026, 11, 24, 3), id="epoch"
        ),
        pytest.param(NEW_YORK_LIMIT, NOW, at(2026, 11, 24, 3), id="zone-later-today"),
        pytest.param(
            NEW_YORK_LIMIT, at(2026, 11, 24, 4), at(2026, 11, 25, 3), id="zone-passed-tomorrow"
        ),
        pytest.param(
            NEW_YORK_LIMIT, at(2026, 11, 24, 3, 5), at(2026, 11, 24, 3, 5), id="zone-just-passed"
        ),
        pytest.param(
            NEW_YORK_LIMIT, at(2026, 11, 24, 3, 11), at(2026, 11, 25, 3), id="zone-11-min-ago"
        ),
        pytest.param(
            "You've hit your session limit · resets 8:30pm (Asia/Tokyo)",
            NOW,
            at(2026, 11, 24, 11, 30),
            id="zone-minutes",
        ),
        pytest.param(
            "Claude usage limit reached. Your limit will reset at 5pm (Europe/Warsaw).",
            NOW,
            at(2026, 11, 23, 16),
            id="zone-reset-at",
        ),
        pytest.param("resets 10pm (Mars/Olympus)", NOW, at(2026, 11, 23, 22), id="zone-unknown"),
        pytest.param(RECIFE_LIMIT, at(2026, 4, 20, 12), at(2026, 4, 23, 19), id="date-this-year"),
        pytest.param(RECIFE_LIMIT, NOW, at(2027, 4, 23, 19), id="date-next-year"),
        pytest.param(
            "5-hour limit reached ∙ resets 5:30am", NOW, at(2026, 11, 23, 20, 30), id="local-time"
        ),
        pytest.param(
            CODEX_LIMIT.format(when="11:01 PM"), NOW, at(2026, 11, 23, 14, 1), id="local-clock"
        ),
        pytest.param(
            CODEX_LIMIT.format(when="11:01 PM"),
            at(2026, 11, 23, 14, 30),
            at(2026, 11, 24, 14, 1),
            id="local-clock-tomorrow",
        ),
        pytest.param(
            CODEX_LIMIT.format(when="Nov 26th, 2026 9:01 PM"),
            NOW,
            at(2026, 11, 26, 12, 1),
            id="local-date",
        ),
        pytest.param(
            "Your quota will reset after 8h44m7s.",
            NOW,
            NOW + timedelta(hours=8, minutes=44, seconds=7),
            id="reset-after",
        ),
        pytest.param(
            "Please try again in 1.5s.", NOW, NOW + timedelta(seconds=1.5), id="try-again-in"
        ),
        pytest.param(
            "Please try again in 6m0s.", NOW, NOW + timedelta(minutes=6), id="try-again-in-m-s"
        ),
        pytest.param("Please retry in 36.2s", NOW, NOW + timedelta(seconds=36.2), id="retry-in"),
        pytest.param(
            "Suggested retry after 30s.", NOW, NOW + timedelta(seconds=30), id="retry-after"
        ),
        pytest.param(
            "Please try again in 820ms.",
            NOW,
            NOW + timedelta(seconds=0.82),
            id="try-again-in-ms",
        ),
        pytest.param("You’ve hit your usage limit. Try again later.", NOW, None, id="no-time"),
        pytest.param("Rate limit exceeded", NOW, None, id="no-time-rate-limit"),
        pytest.param(
            "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try "
            "again in a moment.",
            NOW,
            None,
            id="in-a-moment",
        ),
    ],
)
def test_parse_reset(text: str, now: datetime, expected: datetime | None) -> None:
    """The reset time a message gives, as an aware datetime; None when it gives none."""
    assert parse_reset(text, now) == expected
