"""Secrets kept out of commits: the lines a change adds, scanned before it is committed.

The detectors are detect-secrets' (Yelp) pattern detectors, the ones that recognise a
credential by its shape (an AWS key id, a PEM private key, a GitHub or Slack token...), plus
a few shapes it doesn't know yet (Anthropic, Google and Amp keys, fine-grained GitHub
tokens) and the exact values of the keys ralph passed to the agent. Its entropy and keyword
detectors are off: git object names, hashes, UUIDs and ``password = "test"`` in tests would
fail attempts all day. Nothing goes over the network (detect-secrets only verifies a secret
when asked; ralph never asks).

A finding names the file, the line and the kind of secret, never the value. The agent can't
silence the scanner from inside the change (detect-secrets' ``pragma: allowlist secret``
comments are not honoured): only ``secret_allowlist`` in the settings can.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Protocol

from ralph.globs import matches
from ralph.vcs.gitenv import Git

FILE_CAP = 1024 * 1024
"""Bytes of added text scanned per file; the rest of a bigger file is not (``cut``)."""
LINE_CAP = 64 * 1024
"""Characters of one line scanned (minified bundles): the patterns look at the start."""
MIN_KNOWN_VALUE = 16
"""Values of passed keys shorter than this are not looked for (too likely by chance)."""
MASK = "[masked]"


class Detector(Protocol):
    """A detect-secrets plugin, or one of ralph's own patterns."""

    @property
    def secret_type(self) -> str: ...

    def analyze_string(self, string: str) -> Iterator[str]: ...


@dataclass(frozen=True)
class Pattern:
    """A credential shape detect-secrets 1.5 doesn't know."""

    secret_type: str
    regex: re.Pattern[str]

    def analyze_string(self, string: str) -> Iterator[str]:
        for match in self.regex.finditer(string):
            yield match.group(0)


PATTERNS = (
    Pattern("Anthropic API Key", re.compile(r"sk-ant-[a-z]{2,8}\d{2}-[A-Za-z0-9_-]{32,}")),
    Pattern("OpenAI API Key", re.compile(r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}")),
    Pattern("Google API Key", re.compile(r"AIza[0-9A-Za-z_-]{35}")),
    Pattern("GitHub Token", re.compile(r"github_pat_[A-Za-z0-9_]{60,}")),
    Pattern("Amp API Key", re.compile(r"sgamp_[A-Za-z0-9_-]{24,}")),
    Pattern("Hugging Face Token", re.compile(r"hf_[A-Za-z]{34}(?![A-Za-z0-9])")),
)


@functools.cache
def detectors() -> tuple[Detector, ...]:
    """Shape detectors only. Left out of detect-secrets' set: Base64/Hex high entropy
    (hashes, git object names, lock files), Keyword (``password = ...`` in every test
    suite), public IPs (not a secret), Artifactory (matches ordinary upper-case words), and
    the keyword-and-hex heuristics for Cloudant, IBM Cloud IAM, IBM COS and SoftLayer.

    Imported on first use: detect-secrets brings ``requests`` along, ~0.1 s that commands
    which never scan shouldn't pay."""
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.basic_auth import BasicAuthDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    return (
        AWSKeyDetector(),
        AzureStorageKeyDetector(),
        BasicAuthDetector(),
        DiscordBotTokenDetector(),
        GitHubTokenDetector(),
        GitLabTokenDetector(),
        JwtTokenDetector(),
        MailchimpDetector(),
        NpmDetector(),
        OpenAIDetector(),
        PrivateKeyDetector(),
        PypiTokenDetector(),
        SendGridDetector(),
        SlackDetector(),
        SquareOAuthDetector(),
        StripeDetector(),
        TelegramBotTokenDetector(),
        TwilioKeyDetector(),
        *PATTERNS,
    )


BUILTIN_VALUES = (
    re.compile(r"^AKIAIOSFODNN7EXAMPLE$"),
    re.compile(r"^wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY$"),
)
"""AWS's documentation keys, in countless tests and READMEs."""

# Credentials in a URL to these hosts are local fixtures, not secrets: loopback, the names
# RFC 2606/6761 keep for examples and tests, and single-label names (a compose service:
# ``postgres://app:app@db/app``).
_URL_HOST = re.compile(r"://[^\s/@]*@(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)")
_FAKE_HOST = re.compile(
    r"^(?:127(?:\.\d+){3}|0\.0\.0\.0|::1|[A-Za-z][A-Za-z0-9_-]*|"
    r"(?:.+\.)?(?:example\.(?:com|net|org)|example|test|invalid|localhost))$",
    re.IGNORECASE,
)
# The characters a token is made of: a masked value is masked to the end of its token.
_TOKEN_TAIL = re.compile(r"[A-Za-z0-9_\-.+/=]*")


@dataclass(frozen=True)
class AddedLines:
    """The lines one change adds to one file, with their line numbers in the new file."""

    path: str
    lines: tuple[tuple[int, str], ...]
    cut: bool = False
    """More was added than ``FILE_CAP``: only the first part was scanned."""

    @classmethod
    def of_text(cls, path: str, text: str, first_line: int = 1) -> AddedLines:
        """A whole added text (a new file) as lines numbered from ``first_line``."""
        numbered = enumerate(text.splitlines(), start=first_line)
        return cls(path, tuple(numbered))


@dataclass(frozen=True, order=True)
class Finding:
    """A secret in a change: where, and what kind. Never the value."""

    path: str
    line: int
    kind: str

    def describe(self) -> str:
        return f"{self.path}:{self.line} ({self.kind})"


@dataclass(frozen=True)
class SecretAllowlist:
    """``secret_allowlist``: globs of paths whose secrets are fakes (test fixtures), and
    regular expressions (written ``re:...``) matched against a found value."""

    paths: tuple[str, ...] = ()
    values: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> SecretAllowlist:
        """From the setting's entries; a bad regular expression raises ValueError."""
        paths: list[str] = []
        values: list[re.Pattern[str]] = []
        for entry in entries:
            if entry.startswith("re:"):
                try:
                    values.append(re.compile(entry[3:]))
                except re.error as exc:
                    raise ValueError(
                        f"{entry!r} is not a valid regular expression: {exc}"
                    ) from None
            else:
                paths.append(entry)
        return cls(tuple(paths), tuple(values))

    def allows_path(self, path: str) -> bool:
        return bool(self.paths) and matches(path, self.paths)

    def allows_value(self, value: str) -> bool:
        return any(pattern.search(value) for pattern in (*BUILTIN_VALUES, *self.values))


@dataclass(frozen=True)
class SecretScanner:
    """The scanner of one run: its allowlist and the key values ralph gave the agent."""

    allowlist: SecretAllowlist = field(default_factory=SecretAllowlist)
    known: Mapping[str, str] = field(default_factory=dict)
    """Variable name → value of the keys passed to the agent: found verbatim, they are a
    secret of the kind ``value of $NAME``, whatever their shape."""

    def scan(self, changes: Iterable[AddedLines]) -> list[Finding]:
        """Every secret in the added lines, one finding per kind per line, in order."""
        found: set[Finding] = set()
        for change in changes:
            if self.allowlist.allows_path(change.path):
                continue
            # Each detector over the whole file first (no match crosses a line); only those
            # that hit look line by line.
            text = "\n".join(line[:LINE_CAP] for _number, line in change.lines)
            hits = _detectors_that_hit(text)
            known = {n: v for n, v in self.known.items() if len(v) >= MIN_KNOWN_VALUE and v in text}
            if not hits and not known:
                continue
            for number, line in change.lines:
                for kind, _value in self._secrets(line, hits, known):
                    found.add(Finding(change.path, number, kind))
        return sorted(found)

    def _secrets(
        self,
        line: str,
        hits: Iterable[Detector] | None = None,
        known: Mapping[str, str] | None = None,
    ) -> Iterator[tuple[str, str]]:
        text = line[:LINE_CAP]
        for detector in detectors() if hits is None else hits:
            for value in detector.analyze_string(text):
                if not value or self.allowlist.allows_value(value):
                    continue
                if detector.secret_type == "Basic Auth Credentials" and _fake_host(text):
                    continue
                yield detector.secret_type, value
        for name, value in (self.known if known is None else known).items():
            if len(value) >= MIN_KNOWN_VALUE and value in text:
                yield f"value of ${name}", value

    def mask(self, diff_text: str, findings: Sequence[Finding]) -> str:
        """``diff_text`` (a unified diff) with the secrets masked in the added lines of each
        file a finding names: every value a detector sees, and the body of every private
        key. Other files (an allowlisted fixture) and every other line stay as they were."""
        paths = {finding.path for finding in findings}
        out: list[str] = []
        in_key = False
        for kind, path, _number, line in _diff_lines(diff_text.splitlines(keepends=True)):
            if kind != "+" or path not in paths:
                in_key = False
                out.append(line)
                continue
            body = line[1:]
            if in_key or _KEY_BEGIN.search(body):
                masked, in_key = _mask_key_line(body, in_key)
                out.append("+" + masked)
            else:
                out.append("+" + self._mask_line(body))
        return "".join(out)

    def _mask_line(self, body: str) -> str:
        for _kind, value in self._secrets(body):
            body = _mask_value(body, value)
        return body


_KEY_BEGIN = re.compile(r"BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-*|PuTTY-User-Key-File-\d:")
_KEY_END = re.compile(r"-----END |Private-MAC:")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/=]{16,}.*", re.DOTALL)


def _mask_key_line(body: str, in_key: bool) -> tuple[str, bool]:
    """One line of a private key: its key material masked, whether the key goes on."""
    text, ending = body.rstrip("\r\n"), body[len(body.rstrip("\r\n")) :]
    head = ""
    if not in_key and (begin := _KEY_BEGIN.search(text)):
        head, text = text[: begin.end()], text[begin.end() :]
    end = _KEY_END.search(text)
    material, tail = (text[: end.start()], text[end.start() :]) if end else (text, "")
    material = _KEY_BODY.sub(MASK, material)
    return head + material + tail + ending, end is None


def _detectors_that_hit(text: str) -> tuple[Detector, ...]:
    """The detectors that find something in ``text``; a cheap look for a detector's fixed
    part first where its own expression is slow (case-insensitive, no literal prefix)."""
    lowered = text.lower()
    return tuple(
        detector
        for detector in detectors()
        if _GUARDS.get(detector.secret_type, _always)(text, lowered)
        and next(iter(detector.analyze_string(text)), None)
    )


_AWS_IDS = ("A3T", "ABIA", "ACCA", "AKIA", "ASIA")
_DISCORD = re.compile(r"\.[a-zA-Z\d_-]{6}\.[a-zA-Z\d_-]{27}")
_GUARDS: dict[str, Callable[[str, str], bool]] = {
    "AWS Access Key": lambda text, low: "aws" in low or any(p in text for p in _AWS_IDS),
    "Slack Token": lambda _text, low: "xox" in low or "hooks.slack.com" in low,
    "Mailchimp Access Key": lambda text, _low: "-us" in text,
    "Stripe Access Key": lambda text, _low: "k_live_" in text,
    "Private Key": lambda text, _low: "PRIVATE KEY" in text or "PuTTY" in text,
    "Discord Bot Token": lambda text, _low: _DISCORD.search(text) is not None,
}


def _always(_text: str, _low: str) -> bool:
    return True


def _fake_host(line: str) -> bool:
    hosts = _URL_HOST.findall(line)
    return bool(hosts) and all(_FAKE_HOST.match(host.strip("[]")) for host in hosts)


def _mask_value(text: str, value: str) -> str:
    out: list[str] = []
    start = 0
    while (index := text.find(value, start)) >= 0:
        tail = _TOKEN_TAIL.match(text, index + len(value))
        end = tail.end() if tail else index + len(value)
        out.append(text[start:index] + MASK)
        start = end
    out.append(text[start:])
    return "".join(out)


def _masked_keep_end(body: str) -> str:
    ending = body[len(body.rstrip("\r\n")) :]
    return MASK + ending


def scan(
    changes: Iterable[AddedLines],
    allowlist: SecretAllowlist | None = None,
    known: Mapping[str, str] | None = None,
) -> list[Finding]:
    """The secrets in ``changes`` (see ``SecretScanner.scan``)."""
    return SecretScanner(allowlist or SecretAllowlist(), known or {}).scan(changes)


def mask(
    diff_text: str, findings: Sequence[Finding], known: Mapping[str, str] | None = None
) -> str:
    """``diff_text`` with its secrets masked (see ``SecretScanner.mask``)."""
    return SecretScanner(known=known or {}).mask(diff_text, findings)


def summary(findings: Sequence[Finding], limit: int = 20) -> str:
    """What the next agent reads: where the secrets are and what to do instead."""
    shown = ", ".join(f.describe() for f in findings[:limit])
    more = f" and {len(findings) - limit} more" if len(findings) > limit else ""
    return (
        f"The change adds secrets: {shown}{more}. Don't write credentials into the "
        "repository: read them from the environment at run time. A fake value a test needs "
        "goes in a file the setting secret_allowlist names (ask for it), not in the code."
    )


# --- the added lines of a change, from git ----------------------------------------------


def added_lines(git: Git, start: str, tree: str, cap: int = FILE_CAP) -> list[AddedLines]:
    """The lines the change from commit ``start`` to ``tree`` adds, per file, at most ``cap``
    bytes per file; renamed files count only their changed lines, binary files are skipped.
    The diff goes through a temporary file, never whole in memory."""
    with tempfile.TemporaryFile() as handle:
        git.stream(
            "-c",
            "core.quotePath=false",
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-relative",
            "--unified=0",
            "--find-renames",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            start,
            tree,
            into=handle,
        )
        handle.seek(0)
        return _collect(_decoded(handle), cap)


def _decoded(handle: IO[bytes]) -> Iterator[str]:
    for raw in handle:
        yield raw.decode("utf-8", errors="replace")


def _collect(lines: Iterable[str], cap: int) -> list[AddedLines]:
    files: dict[str, tuple[list[tuple[int, str]], list[int]]] = {}
    for kind, path, number, line in _diff_lines(lines):
        if kind != "+" or path is None:
            continue
        kept, size = files.setdefault(path, ([], [0, 0]))
        text = line[1:].rstrip("\r\n")
        if size[0] + len(text) > cap:
            size[1] = 1
            continue
        size[0] += len(text) + 1
        kept.append((number, text))
    return [
        AddedLines(path, tuple(kept), cut=bool(size[1])) for path, (kept, size) in files.items()
    ]


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _diff_lines(lines: Iterable[str]) -> Iterator[tuple[str, str | None, int, str]]:
    """Each line of a unified diff as (kind, new path, new line number, line): kind is
    ``+`` (added), `` `` (context), ``-`` (removed) or ``h`` (a header or anything else)."""
    path: str | None = None
    number = 0
    in_hunk = False
    for line in lines:
        if line.startswith("diff --git "):
            path, in_hunk = None, False
        elif not in_hunk and line.startswith("+++ "):
            path = _new_path(line[4:].rstrip("\r\n"))
        elif hunk := _HUNK.match(line):
            number, in_hunk = int(hunk.group(1)), True
        elif in_hunk and line.startswith("+"):
            yield "+", path, number, line
            number += 1
            continue
        elif in_hunk and line.startswith(" "):
            yield " ", path, number, line
            number += 1
            continue
        elif in_hunk and line.startswith(("-", "\\")):
            yield "-", path, number, line
            continue
        else:
            in_hunk = False
        yield "h", path, number, line


def _new_path(text: str) -> str | None:
    text = text.removesuffix("\t")  # git ends a name holding a space with a tab
    if text == "/dev/null":
        return None
    if text.startswith('"'):
        text = _unquote(text)
    return text[2:] if text.startswith("b/") else text


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(text: str) -> str:
    """A path git wrote C-style quoted (``"b/tab\\there"``, octal bytes for the rest)."""
    body = text[1:-1] if text.endswith('"') else text[1:]
    out = bytearray()
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            following = body[index + 1]
            if following in "01234567" and index + 3 < len(body):
                out.append(int(body[index + 1 : index + 4], 8))
                index += 4
                continue
            out.append(_ESCAPES.get(following, ord(following)))
            index += 2
            continue
        out.extend(char.encode("utf-8", "surrogateescape"))
        index += 1
    return out.decode("utf-8", "surrogateescape")
