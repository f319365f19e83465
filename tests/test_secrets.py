"""Secrets kept out of commits: the lines a change adds are scanned; a finding names file,
line and kind, never the value; an allowlisted fixture passes; ordinary code isn't flagged.

Every fake secret here is put together at run time, so this file holds none itself.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import git

from ralph.engine import secrets
from ralph.engine.secrets import AddedLines, Finding, SecretAllowlist, SecretScanner, scan
from ralph.vcs.gitenv import Git, GitEnv

AWS_KEY_ID = "AKIA" + "Z7Q2M4XK9PLW3RTB"
AWS_SECRET = "q8Lr2vX9mB3nW7kP1tY5cJ0hF4gD6sZ8aE2uR" + "x1V"
PEM = (
    "-----BEGIN " + "RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA1c8s3x7bq9ZbYc4TQZk2lWmXa5sJ0vQy\n"
    "Xy3kP0qLr8sTu2vW4zA6bC8dE0fG2hI4jK6lM8nO0pQ2rS4t\n"
    "-----END " + "RSA PRIVATE KEY-----\n"
)
SAMPLES = {
    "AWS Access Key": f'AWS_ACCESS_KEY_ID = "{AWS_KEY_ID}"',
    "GitHub Token": "token = 'ghp_" + "x3Rk9TqW2mLp8ZvB4nC7yD1fG6hJ0sK5aE2u'",
    "Slack Token": "SLACK = 'xoxb-" + "2222222222-3333333333-abcdefghijklmnopqrstuvwx'",
    "Stripe Access Key": "stripe.api_key = 'sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc'",
    "Anthropic API Key": "key = 'sk-ant-" + "api03-" + "Zx9" * 30 + "'",
    "Google API Key": "maps = 'AIza" + "SyD3xK9mQ2vL7pW4rT8nB1cF6hJ0gY5zA3e'",
    "Private Key": "-----BEGIN " + "OPENSSH PRIVATE KEY-----",
    "Basic Auth Credentials": "DSN = 'postgres://app:" + "Zq8rT2pL@db.prod.acme.io/app'",
}


def test_a_planted_aws_key_and_a_private_key_are_found_with_file_and_line() -> None:
    """A new file with an AWS key id on line 3 and a PEM key from line 1 of another file:
    both found, with path, line and kind."""
    code = f'import os\n\nKEY = "{AWS_KEY_ID}"\nREGION = "eu-west-1"\n'
    findings = scan([AddedLines.of_text("app/config.py", code), AddedLines.of_text("id_rsa", PEM)])
    assert findings == [
        Finding("app/config.py", 3, "AWS Access Key"),
        Finding("id_rsa", 1, "Private Key"),
    ]


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_each_kind_of_credential_is_recognised(kind: str) -> None:
    """Each shape the scanner knows is found in an added line."""
    findings = scan([AddedLines.of_text("x.py", SAMPLES[kind])])
    assert [finding.kind for finding in findings] == [kind]


def test_no_finding_holds_the_secret() -> None:
    """Findings and the summary for the next agent name place and kind, never the value."""
    findings = scan([AddedLines.of_text("a.py", SAMPLES["AWS Access Key"])])
    text = repr(findings) + secrets.summary(findings)
    assert findings and AWS_KEY_ID not in text
    assert "a.py:1 (AWS Access Key)" in text


def test_an_allowlisted_fixture_passes() -> None:
    """A fake key in tests/fixtures passes with that folder in secret_allowlist; the same key
    elsewhere is still found."""
    allowlist = SecretAllowlist.parse(["tests/fixtures/**"])
    changes = [
        AddedLines.of_text("tests/fixtures/fake_aws.py", SAMPLES["AWS Access Key"]),
        AddedLines.of_text("tests/fixtures/keys/id_rsa", PEM),
        AddedLines.of_text("src/settings.py", SAMPLES["AWS Access Key"]),
    ]
    assert scan(changes, allowlist) == [Finding("src/settings.py", 1, "AWS Access Key")]


def test_a_value_pattern_in_the_allowlist_lets_a_known_fake_pass() -> None:
    """``re:`` entries are matched against the value found; AWS's documentation keys always pass."""
    allowlist = SecretAllowlist.parse([f"re:^{AWS_KEY_ID[:8]}"])
    assert scan([AddedLines.of_text("a.py", SAMPLES["AWS Access Key"])], allowlist) == []
    documented = 'KEY = "AKIA' + 'IOSFODNN7EXAMPLE"'
    assert scan([AddedLines.of_text("README.md", documented)]) == []


def test_a_bad_regular_expression_in_the_allowlist_is_an_error() -> None:
    """A pattern that doesn't compile is refused with the entry named."""
    with pytest.raises(ValueError, match=r"re:\(unclosed"):
        SecretAllowlist.parse(["re:(unclosed"])


def test_a_comment_in_the_change_cant_silence_the_scanner() -> None:
    """detect-secrets' ``pragma: allowlist secret`` is the agent's to write: not honoured."""
    line = SAMPLES["AWS Access Key"] + "  # pragma: allowlist secret"
    assert scan([AddedLines.of_text("a.py", line)]) != []


ORDINARY = """\
import uuid

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
HEAD = "d00495f1c2b3a4e5f60718293a4b5c6d7e8f9012"
REQUEST_ID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
INTEGRITY = "sha512-Q2FzcGVyIHRoZSBmcmllbmRseSBnaG9zdCBpcyBub3QgYSBzZWNyZXQ="
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    "rkJggg=="
)
DB = "postgresql://postgres:postgres@localhost:5432/test"
COMPOSE = "postgres://app:app@db:5432/app"
API = "https://user:pass@api.example.com/v1"
password = "hunter2"
token = os.environ["API_TOKEN"]
def test_login(client):
    assert client.login(username="alice", password="correct horse battery staple")
"""


def test_ordinary_code_with_hashes_and_ids_is_not_flagged() -> None:
    """Git object names, UUIDs, hashes, base64 data, test passwords and local database URLs
    are not secrets to the scanner: no false positive."""
    assert scan([AddedLines.of_text("tests/test_ids.py", ORDINARY)]) == []


def test_a_key_ralph_passed_to_the_agent_is_found_whatever_its_shape() -> None:
    """The value of a key variable the agent was given, written into the change, is found."""
    value = "zq" + "7Kp2" * 6
    scanner = SecretScanner(known={"AMP_API_KEY": value, "SHORT": "abc"})
    findings = scanner.scan([AddedLines.of_text("notes.md", f"my key is {value}, abc")])
    assert findings == [Finding("notes.md", 1, "value of $AMP_API_KEY")]


def test_the_scan_never_goes_to_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No detector verifies what it found over the network (detect-secrets could)."""
    import requests

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the secret scan used the network")

    monkeypatch.setattr(requests.sessions.Session, "request", no_network)
    line = f'aws_access_key_id = "{AWS_KEY_ID}"\naws_secret_access_key = "{AWS_SECRET}"\n'
    assert len(scan([AddedLines.of_text("creds.py", line)])) == 2


DIFF = f"""\
diff --git a/app/config.py b/app/config.py
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/app/config.py
@@ -0,0 +1,3 @@
+import os
+KEY = "{AWS_KEY_ID}"
+REGION = "eu-west-1"
diff --git a/id_rsa b/id_rsa
new file mode 100644
--- /dev/null
+++ b/id_rsa
@@ -0,0 +1,4 @@
{"".join("+" + line + chr(10) for line in PEM.splitlines())}\
diff --git a/tests/fixtures/fake.py b/tests/fixtures/fake.py
--- a/tests/fixtures/fake.py
+++ b/tests/fixtures/fake.py
@@ -1 +1,2 @@
 x = 1
+FAKE = "{AWS_KEY_ID}"
"""


def test_the_kept_diff_has_its_secrets_masked() -> None:
    """mask() hides the key's value and the private key's body in the files the findings
    name; every other line, and an allowlisted fixture, stay as they were."""
    findings = [Finding("app/config.py", 2, "AWS Access Key"), Finding("id_rsa", 1, "Private Key")]
    masked = secrets.mask(DIFF, findings)
    config, key, fixture = masked.split("diff --git")[1:]
    assert AWS_KEY_ID not in config and '+KEY = "[masked]"' in config
    assert "MIIE" not in key and "Xy3k" not in key
    begin, *_body, end = PEM.splitlines()
    assert f"+{begin}\n" in key and f"+{end}\n" in key
    assert AWS_KEY_ID in fixture
    assert masked.count("\n") == DIFF.count("\n")
    assert '+REGION = "eu-west-1"' in masked


def test_a_key_on_one_line_is_masked_too() -> None:
    """A private key written on one line (a JSON string with ``\\n``) is masked after its
    header, up to its end marker."""
    one_line = '+"key": "' + PEM.replace("\n", "\\n") + '"\n'
    diff = "diff --git a/k.json b/k.json\n--- /dev/null\n+++ b/k.json\n@@ -0,0 +1 @@\n" + one_line
    masked = secrets.mask(diff, [Finding("k.json", 1, "Private Key")])
    assert "MIIE" not in masked and "END RSA PRIVATE KEY" in masked


# --- the added lines, from git ------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Git, Path, str]:
    """A repository with one commit: (ralph's git in it, its root, the commit)."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "long.py").write_text("".join(f"line {n}\n" for n in range(1, 21)))
    (root / "moved.py").write_text("".join(f"keep {n}\n" for n in range(1, 11)))
    (root / "gone.py").write_text("bye\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    start = git(root, "rev-parse", "HEAD").strip()
    env = GitEnv.snapshot(root, dict(os.environ), tmp_path / "scratch")
    return Git(root, env), root, start


def test_added_lines_come_from_git_with_their_line_numbers(repo: tuple[Git, Path, str]) -> None:
    """New files count from 1, a modified file gives only its new lines at their numbers, a
    renamed file only what changed, a deleted or binary file nothing; odd names survive."""
    tool, root, start = repo
    lines = (root / "long.py").read_text().splitlines()
    lines[9] = f'KEY = "{AWS_KEY_ID}"'
    lines.insert(15, "inserted")
    (root / "long.py").write_text("\n".join(lines) + "\n")
    (root / "moved.py").rename(root / "renamed.py")
    with (root / "renamed.py").open("a") as handle:
        handle.write("added after the move\n")
    (root / "gone.py").unlink()
    (root / 'odd "name"\twith tab.py').write_text("one\ntwo\n")
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    git(root, "add", "-A")
    tree = git(root, "write-tree").strip()
    added = {change.path: change.lines for change in secrets.added_lines(tool, start, tree)}
    assert added == {
        "long.py": ((10, f'KEY = "{AWS_KEY_ID}"'), (16, "inserted")),
        "renamed.py": ((11, "added after the move"),),
        'odd "name"\twith tab.py': ((1, "one"), (2, "two")),
    }
    findings = scan(secrets.added_lines(tool, start, tree))
    assert findings == [Finding("long.py", 10, "AWS Access Key")]


def test_a_huge_file_is_scanned_up_to_the_cap(repo: tuple[Git, Path, str]) -> None:
    """Past the cap per file the rest is not read, and the file says it was cut."""
    tool, root, start = repo
    (root / "big.txt").write_text("x" * 99 + "\n" + "y" * 99 + "\n")
    git(root, "add", "-A")
    tree = git(root, "write-tree").strip()
    (big,) = [c for c in secrets.added_lines(tool, start, tree, cap=150) if c.path == "big.txt"]
    assert big.cut and big.lines == ((1, "x" * 99),)


def test_git_sees_the_same_paths_the_scanner_reports(repo: tuple[Git, Path, str]) -> None:
    """The paths of findings are the repository's own paths (what ``git diff --name-only`` says)."""
    tool, root, start = repo
    (root / "dir with space").mkdir()
    (root / "dir with space" / "k.py").write_text(SAMPLES["GitHub Token"] + "\n")
    git(root, "add", "-A")
    tree = git(root, "write-tree").strip()
    names = subprocess.run(
        ["git", "diff", "--name-only", start, tree], cwd=root, capture_output=True, text=True
    ).stdout.split("\n")
    findings = scan(secrets.added_lines(tool, start, tree))
    assert [f.path for f in findings] == ["dir with space/k.py"]
    assert findings[0].path in names
