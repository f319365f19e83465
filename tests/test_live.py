"""Reading an agent while it runs: each CLI's recorded stream, fed one line at a time, gives
the signals ralph acts on, and ``stop_now`` decides which of them end the agent early."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from signal import SIGTERM

import anyio
import pytest
from anyio.abc import ByteReceiveStream
from conftest import to_toml

from ralph.agents import make_agent
from ralph.agents.live import (
    DETAIL_CHARS,
    MAX_LINE_BYTES,
    LiveReader,
    Signal,
    SignalKind,
    retry_after,
    stop_now,
)
from ralph.outcome import Reason
from ralph.settings import load_settings

FIXTURES = Path(__file__).parent / "fixtures" / "agents"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STREAMING = ["claude", "codex", "gemini", "opencode", "scripted"]

AUTH = SignalKind.AUTH_FAILED
LIMIT = SignalKind.USAGE_LIMIT
OUTAGE = SignalKind.API_OUTAGE
RETRYING = SignalKind.RETRYING
PROGRESS = SignalKind.PROGRESS
FINAL = SignalKind.FINAL


def reader_for(root: Path, name: str, now: datetime | None = NOW) -> LiveReader | None:
    """Agent ``name``'s live reader, its clock stopped at ``now`` (None: the real clock)."""
    settings: dict[str, object] = {"agent": name, "checks": ["true"]}
    if name == "command":
        settings["agent_command"] = "my-agent"
    if name == "scripted":
        (root / "script.toml").write_text("[tasks]\n", encoding="utf-8")
        settings["agent_script"] = "script.toml"
    (root / "ralph.toml").write_text(to_toml(settings), encoding="utf-8")
    agent = make_agent(load_settings(root, environ={}), root)
    return agent.live_reader(lambda: now or datetime.now(UTC))


@pytest.fixture
def local_time_in_tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make the machine's local time zone Asia/Tokyo (UTC+9, no daylight saving)."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@dataclasses.dataclass(frozen=True)
class Seen:
    """A signal other than PROGRESS, and the line (from 1) that gave it."""

    line: int
    kind: SignalKind
    status: int | None = None
    cli_retries: bool = False
    retry_at: datetime | None = None


def seen(line: int, said: Signal) -> Seen:
    return Seen(line, said.kind, said.status, said.cli_retries, said.retry_at)


def after(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


CLAUDE_401_DELAYS = [509, 1111, 2246, 4367, 8440, 19148, 34286, 38898, 35053, 34238]
RECONNECTS = range(3, 8)  # Codex's "Reconnecting... n/5" lines

# (agent, fixture, the signals other than PROGRESS, the line stop_now first says stop on)
STREAMS = [
    pytest.param(
        "claude",
        "claude-401-retrying.jsonl",
        [
            *(
                Seen(n + 2, AUTH, 401, True, after(delay / 1000))
                for n, delay in enumerate(CLAUDE_401_DELAYS)
            ),
            Seen(12, AUTH, 401),
            Seen(13, AUTH, 401),
            Seen(13, FINAL, 401),
        ],
        3,
        id="claude-401-retried",
    ),
    pytest.param(
        "claude",
        "claude-403.jsonl",
        [Seen(2, AUTH, 403), Seen(3, AUTH, 403), Seen(3, FINAL, 403)],
        2,
        id="claude-403",
    ),
    pytest.param(
        "claude",
        "claude-auth.jsonl",
        [Seen(2, AUTH), Seen(3, AUTH), Seen(3, FINAL)],
        2,
        id="claude-invalid-key",
    ),
    pytest.param(
        "claude",
        "claude-429-retrying.jsonl",
        [Seen(3, LIMIT, 429, True, after(2.011)), Seen(12, FINAL)],
        None,
        id="claude-429-retried",
    ),
    pytest.param(
        "claude",
        "claude-429-retry-after-too-long.jsonl",
        [Seen(2, LIMIT, 429), Seen(3, LIMIT, 429), Seen(3, FINAL, 429)],
        None,
        id="claude-429-given-up",
    ),
    pytest.param(
        "claude",
        "claude-usage-limit.jsonl",
        [
            Seen(3, LIMIT, retry_at=datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
            Seen(4, LIMIT, retry_at=datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
            Seen(5, LIMIT, 429, retry_at=datetime(2026, 11, 24, 3, 0, tzinfo=UTC)),
            Seen(5, FINAL, 429),
        ],
        None,
        id="claude-plan-limit",
    ),
    pytest.param(
        "claude",
        "claude-529-retrying.jsonl",
        [
            Seen(2, OUTAGE, 529, True, after(0.596)),
            Seen(3, OUTAGE, 529, True, after(1.187)),
            Seen(4, OUTAGE, 529, True, after(2.301)),
            Seen(5, OUTAGE, 529),
            Seen(6, OUTAGE, 529),
            Seen(6, FINAL, 529),
        ],
        None,
        id="claude-529",
    ),
    pytest.param(
        "claude",
        "claude-overloaded.jsonl",
        [
            Seen(2, OUTAGE, 529, True, after(0.6)),
            Seen(3, OUTAGE),
            Seen(4, OUTAGE, 529),
            Seen(4, FINAL, 529),
        ],
        None,
        id="claude-529-server-error",
    ),
    pytest.param(
        "claude",
        "claude-connection-retry.jsonl",
        [Seen(2, RETRYING, None, True, after(0.532))],
        None,
        id="claude-no-response",
    ),
    pytest.param("claude", "claude-partial-messages.jsonl", [], None, id="claude-partials"),
    pytest.param("claude", "claude-success.jsonl", [Seen(5, FINAL)], None, id="claude-success"),
    pytest.param(
        "codex",
        "codex-401-reconnecting.jsonl",
        [
            *(Seen(n, AUTH, 401, True) for n in RECONNECTS),
            Seen(8, AUTH, 401),
            Seen(9, AUTH, 401),
            Seen(9, FINAL),
        ],
        4,
        id="codex-401-reconnecting",
    ),
    pytest.param(
        "codex",
        "codex-unauthorized.jsonl",
        [Seen(3, AUTH, 401, True), Seen(4, AUTH, 401), Seen(5, AUTH, 401), Seen(5, FINAL)],
        4,
        id="codex-401",
    ),
    pytest.param(
        "codex",
        "codex-429-rate-limit.jsonl",
        [
            *(Seen(n, LIMIT, 429, True) for n in RECONNECTS),
            Seen(8, LIMIT, 429),
            Seen(9, LIMIT, 429),
            Seen(9, FINAL),
        ],
        None,
        id="codex-429",
    ),
    pytest.param(
        "codex",
        "codex-503-reconnecting.jsonl",
        [
            *(Seen(n, OUTAGE, 503, True) for n in RECONNECTS),
            Seen(8, OUTAGE, 503),
            Seen(9, OUTAGE, 503),
            Seen(9, FINAL),
        ],
        None,
        id="codex-503",
    ),
    pytest.param(
        "codex",
        "codex-reconnected.jsonl",
        [Seen(3, OUTAGE, None, True), Seen(5, FINAL)],
        None,
        id="codex-reconnected",
    ),
    pytest.param(
        "codex",
        "codex-usage-limit.jsonl",
        [
            Seen(3, LIMIT, retry_at=datetime(2026, 11, 23, 14, 1, tzinfo=UTC)),
            Seen(4, LIMIT, retry_at=datetime(2026, 11, 23, 14, 1, tzinfo=UTC)),
            Seen(4, FINAL),
        ],
        None,
        id="codex-usage-limit-at",
    ),
    pytest.param(
        "codex",
        "codex-usage-limit-no-reset.jsonl",
        [Seen(3, LIMIT), Seen(4, LIMIT), Seen(4, FINAL)],
        None,
        id="codex-usage-limit",
    ),
    pytest.param(
        "codex",
        "codex-quota.jsonl",
        [Seen(5, LIMIT), Seen(6, LIMIT), Seen(6, FINAL)],
        None,
        id="codex-quota",
    ),
    pytest.param(
        "codex",
        "codex-success.jsonl",
        [Seen(7, FINAL), Seen(11, FINAL)],
        None,
        id="codex-success",
    ),
    pytest.param(
        "gemini",
        "gemini-401.jsonl",
        [Seen(3, AUTH, 401), Seen(3, FINAL)],
        3,
        id="gemini-401",
    ),
    pytest.param(
        "gemini",
        "gemini-bad-key.jsonl",
        [Seen(3, AUTH, 400), Seen(3, FINAL)],
        3,
        id="gemini-bad-key",
    ),
    pytest.param(
        "gemini",
        "gemini-quota-per-minute.log",
        [
            Seen(3, LIMIT, None, True, after(3)),
            Seen(5, LIMIT, None, True, after(3)),
            Seen(7, LIMIT, None, False, after(3)),
            Seen(7, FINAL),
        ],
        None,
        id="gemini-429-per-minute",
    ),
    pytest.param(
        "gemini",
        "gemini-daily-quota.jsonl",
        [Seen(3, LIMIT), Seen(3, FINAL)],
        None,
        id="gemini-daily-quota",
    ),
    pytest.param(
        "gemini",
        "gemini-quota.jsonl",
        [Seen(3, LIMIT, retry_at=after(2 * 3600 + 3 * 60 + 4)), Seen(3, FINAL)],
        None,
        id="gemini-quota-reset",
    ),
    pytest.param(
        "gemini",
        "gemini-503.log",
        [Seen(3, OUTAGE, 503, True), Seen(8, OUTAGE, 503, True), Seen(13, OUTAGE), Seen(13, FINAL)],
        None,
        id="gemini-503",
    ),
    pytest.param("gemini", "gemini-success.jsonl", [Seen(7, FINAL)], None, id="gemini-success"),
    pytest.param("opencode", "opencode-401.jsonl", [Seen(1, AUTH, 401)], 1, id="opencode-401"),
    pytest.param(
        "opencode", "opencode-auth.jsonl", [Seen(2, AUTH)], 2, id="opencode-provider-auth"
    ),
    pytest.param(
        "opencode",
        "opencode-429-retry-after.jsonl",
        [Seen(1, LIMIT, 429, retry_at=after(2))],
        None,
        id="opencode-429",
    ),
    pytest.param(
        "opencode",
        "opencode-rate-limited.jsonl",
        [Seen(2, LIMIT, 429)],
        None,
        id="opencode-free-usage",
    ),
    pytest.param("opencode", "opencode-503.jsonl", [Seen(2, OUTAGE, 503)], None, id="opencode-503"),
    pytest.param(
        "opencode", "opencode-success.jsonl", [Seen(6, FINAL)], None, id="opencode-success"
    ),
    pytest.param(
        "scripted",
        "claude-401-retrying.jsonl",
        [
            *(
                Seen(n + 2, AUTH, 401, True, after(delay / 1000))
                for n, delay in enumerate(CLAUDE_401_DELAYS)
            ),
            Seen(12, AUTH, 401),
            Seen(13, AUTH, 401),
            Seen(13, FINAL, 401),
        ],
        3,
        id="scripted-plays-claude",
    ),
]


@pytest.mark.usefixtures("local_time_in_tokyo")
@pytest.mark.parametrize(("name", "fixture", "expected", "stop_line"), STREAMS)
def test_recorded_stream_read_line_by_line(
    tmp_path: Path, name: str, fixture: str, expected: list[Seen], stop_line: int | None
) -> None:
    """Fed one line at a time, a CLI's recorded stream gives its verdicts on the lines that
    say them, a sign of life for every other event, and nothing for lines that aren't events."""
    reader = reader_for(tmp_path, name)
    assert reader is not None
    verdicts: list[Seen] = []
    first_stop = None
    for number, line in enumerate((FIXTURES / fixture).read_bytes().splitlines(True), 1):
        signals = reader.feed(line)
        if line.startswith(b"{"):
            assert signals, f"line {number} is an event but gave no signal"
        for said in signals:
            assert said.detail and len(said.detail) <= DETAIL_CHARS
            if said.kind is not PROGRESS:
                verdicts.append(seen(number, said))
            if first_stop is None and stop_now(said, NOW):
                first_stop = number
    assert verdicts == expected
    assert first_stop == stop_line


@pytest.mark.parametrize(
    ("name", "streams"),
    [
        ("claude", True),
        ("codex", True),
        ("gemini", True),
        ("opencode", True),
        ("scripted", True),
        ("amp", False),
        ("aider", False),
        ("command", False),
    ],
)
def test_which_agents_are_read_live(tmp_path: Path, name: str, streams: bool) -> None:
    """The four CLIs whose events were studied, and the scripted agent, are read live; Amp,
    Aider and a command of the user's own are not (no reader, so no stall timeout either)."""
    assert (reader_for(tmp_path, name) is not None) is streams


HUGE_EVENT = b'{"type":"user","message":{"content":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}\n'


@pytest.mark.parametrize("name", STREAMING)
@pytest.mark.parametrize(
    ("line", "progress"),
    [
        pytest.param(b"", False, id="empty"),
        pytest.param(b"\n", False, id="blank"),
        pytest.param(b"Loaded cached credentials.\n", False, id="plain-text"),
        pytest.param(b"[1, 2, 3]\n", False, id="json-array"),
        pytest.param(b'{"type": "result", "is_error": tr', False, id="cut-off"),
        pytest.param(b'{"no_type": 1}\n', False, id="no-type"),
        pytest.param(b'{"type": 401}\n', False, id="type-not-a-string"),
        pytest.param(b'{"type":"\xff\xfe"}\n', False, id="not-utf8"),
        pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, False, id="nested-too-deep"),
        pytest.param(b"x" * (8 * 1024 * 1024) + b"\n", False, id="huge-plain"),
        pytest.param(HUGE_EVENT, True, id="huge-event"),
        pytest.param(HUGE_EVENT[: MAX_LINE_BYTES + 1], True, id="huge-event-cut"),
        pytest.param(b'{"type":"something_new","x":1}\n', True, id="unknown-event"),
        pytest.param(b'{"type":"error"}\n', True, id="error-without-details"),
        pytest.param(b'{"type":"result","is_error":"yes","status":7}\n', True, id="odd-fields"),
    ],
)
def test_lines_that_are_not_events_are_ignored(
    tmp_path: Path, name: str, line: bytes, progress: bool
) -> None:
    """Any line at all is read without an error: a line that is no event says nothing, an
    event too long to parse (or cut short) is only a sign of life, an odd event never a verdict."""
    reader = reader_for(tmp_path, name)
    assert reader is not None
    signals = reader.feed(line)
    if not progress:
        assert signals == []
    else:
        assert signals
        assert all(s.kind in (PROGRESS, FINAL) for s in signals)


def limit(seconds: float | None, cli_retries: bool = True, kind: SignalKind = LIMIT) -> Signal:
    """A signal of ``kind`` whose wait ends ``seconds`` from NOW (None: no time given)."""
    retry_at = None if seconds is None else after(seconds)
    return Signal(kind, "x", retry_at=retry_at, cli_retries=cli_retries)


@pytest.mark.parametrize(
    ("signal", "longest_cli_wait", "stop"),
    [
        pytest.param(
            Signal(AUTH, "x", 401, after(0.5), True, retry=1), 60, False, id="auth-first-retry"
        ),
        pytest.param(
            Signal(AUTH, "x", 401, after(1.1), True, retry=2), 60, True, id="auth-second-retry"
        ),
        pytest.param(Signal(AUTH, "x", 401, after(0.5), True), 60, True, id="auth-uncounted-retry"),
        pytest.param(Signal(AUTH, "x", 401), 60, True, id="auth-cli-gives-up"),
        pytest.param(limit(2), 60, False, id="limit-short-wait"),
        pytest.param(limit(60), 60, False, id="limit-at-threshold"),
        pytest.param(limit(61), 60, True, id="limit-long-wait"),
        pytest.param(limit(5 * 3600), 60, True, id="limit-hours"),
        pytest.param(limit(None), 60, False, id="limit-no-time"),
        pytest.param(limit(5 * 3600, cli_retries=False), 60, False, id="limit-cli-gives-up"),
        pytest.param(limit(120), 300, False, id="limit-under-longer-threshold"),
        pytest.param(limit(30, kind=OUTAGE), 60, False, id="outage-short-wait"),
        pytest.param(limit(600, kind=OUTAGE), 60, True, id="outage-long-wait"),
        pytest.param(limit(600, cli_retries=False, kind=OUTAGE), 60, False, id="outage-given-up"),
        pytest.param(limit(600, kind=RETRYING), 60, False, id="unknown-retry"),
        pytest.param(Signal(PROGRESS, "assistant"), 60, False, id="progress"),
        pytest.param(Signal(FINAL, "completed"), 60, False, id="final"),
    ],
)
def test_stop_now(signal: Signal, longest_cli_wait: float, stop: bool) -> None:
    """Auth stops at once (after a retrying CLI's first retry, which may be a token refresh); a
    limit or outage stops only when the CLI would wait longer than the threshold itself;
    anything the CLI is giving up on, or has no class, doesn't."""
    assert stop_now(signal, NOW, timedelta(seconds=longest_cli_wait)) is stop


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (AUTH, Reason.AUTH),
        (LIMIT, Reason.USAGE_LIMIT),
        (OUTAGE, Reason.API_OUTAGE),
        (RETRYING, None),
        (PROGRESS, None),
        (FINAL, None),
    ],
)
def test_signal_reason(kind: SignalKind, reason: Reason | None) -> None:
    """A verdict's signal names the failure class an attempt stopped on it ends with."""
    assert Signal(kind).reason is reason


def test_signal_as_event() -> None:
    """A signal becomes the fields of an event, its reset time as ISO text."""
    signal = Signal(AUTH, "HTTP 401", 401, after(1), True, 4, 10)
    assert signal.as_event() == {
        "signal": "auth_failed",
        "detail": "HTTP 401",
        "status": 401,
        "retry_at": "2026-11-23T12:00:01+00:00",
        "cli_retries": True,
        "retry": 4,
        "max_retries": 10,
    }


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"retry-after": "2"}, after(2), id="seconds"),
        pytest.param({"Retry-After": " 1.5 "}, after(1.5), id="any-case"),
        pytest.param({"retry-after-ms": "250", "retry-after": "9"}, after(0.25), id="ms-first"),
        pytest.param(
            {"retry-after": "Mon, 23 Nov 2026 17:00:00 GMT"},
            datetime(2026, 11, 23, 17, 0, tzinfo=UTC),
            id="http-date",
        ),
        pytest.param({"retry-after": "soon"}, None, id="nonsense"),
        pytest.param({"content-type": "application/json"}, None, id="absent"),
        pytest.param("retry-after: 2", None, id="not-a-mapping"),
    ],
)
def test_retry_after(headers: object, expected: datetime | None) -> None:
    """A response's retry-after (seconds or an HTTP date) or retry-after-ms is a time."""
    assert retry_after(headers, NOW) == expected


# --- a real process, read while it runs -------------------------------------------------------

PRINT_SLOWLY = """
import sys, time
for line in open(sys.argv[1], "rb"):
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
    time.sleep(0.3)
time.sleep(2)  # a CLI taking its time to exit
"""


async def lines_of(stream: ByteReceiveStream) -> AsyncIterator[bytes]:
    """Each complete line of a pipe as it arrives, then whatever is left at its end."""
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


@pytest.mark.parametrize(
    ("name", "fixture"),
    [
        ("claude", "claude-401-retrying.jsonl"),
        ("codex", "codex-401-reconnecting.jsonl"),
        ("gemini", "gemini-401.jsonl"),
        ("opencode", "opencode-401.jsonl"),
    ],
)
def test_auth_verdict_arrives_while_the_agent_runs(tmp_path: Path, name: str, fixture: str) -> None:
    """A process printing a CLI's refused-key stream a line per 0.3 s is judged AUTH_FAILED,
    and stopped for it, while it still runs, long before it would have exited."""
    reader = reader_for(tmp_path, name, now=None)
    assert reader is not None
    path = FIXTURES / fixture
    runs_for = 0.3 * len(path.read_bytes().splitlines()) + 2

    async def main() -> tuple[Signal | None, float, int | None]:
        started = time.monotonic()
        verdict = None
        argv = [sys.executable, "-c", PRINT_SLOWLY, str(path)]
        async with await anyio.open_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as process:
            assert process.stdout is not None
            async for line in lines_of(process.stdout):
                stops = [s for s in reader.feed(line) if stop_now(s, datetime.now(UTC))]
                if stops:
                    verdict = stops[0]
                    break
            elapsed = time.monotonic() - started
            process.terminate()
            await process.wait()
        return verdict, elapsed, process.returncode

    verdict, elapsed, exit_code = anyio.run(main)
    assert verdict is not None and verdict.kind is AUTH
    assert verdict.reason is Reason.AUTH
    assert exit_code == -SIGTERM  # still running when the verdict came: ralph stopped it
    assert elapsed < runs_for - 1.5
