"""The sandbox for real: a hostile command run through ``bwrap_argv`` in a real worktree of a
throwaway repository, and each thing it tries is blocked while the worktree stays writable.

Skipped only where bwrap is missing or the kernel forbids the namespaces it needs (the probe
says which), and not even then with ``RALPHD_REQUIRE_SANDBOX=1`` (CI); anything else that
goes wrong with bwrap fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from conftest import git

from ralph.globs import matches
from ralph.runtime import sandbox
from ralph.runtime.sandbox import Bind, SandboxSpec, bwrap_argv, program_paths, readonly_paths

PROBE = sandbox.check()
# CI sets RALPHD_REQUIRE_SANDBOX=1: there a machine without the sandbox is a failure.
if PROBE.unavailable and os.environ.get("RALPHD_REQUIRE_SANDBOX") == "1":
    raise RuntimeError(f"RALPHD_REQUIRE_SANDBOX=1 but no sandbox here: {PROBE.message}")
pytestmark = pytest.mark.skipif(PROBE.unavailable, reason=f"no sandbox here: {PROBE.message}")

PROTECTED = ["specs/**", "docs/specs/**", "ralph.toml", "AGENTS.md"]
APPEND_ONLY = ["migrations/**"]
FAKE_KEY = "-----BEGIN " + "OPENSSH PRIVATE KEY-----\nfake-key-for-the-sandbox-test\n"


@dataclass
class Box:
    """A repository with a ralph-style worktree, a fake home, and a way to run in the box."""

    repo: Path
    worktree: Path
    common: Path
    home: Path
    outside: Path

    def spec(self, **changes: object) -> SandboxSpec:
        tracked = git(self.worktree, "ls-files", "-z").split("\0")
        base = SandboxSpec(
            worktree=self.worktree,
            git_common_dir=self.common,
            repository=self.repo,
            readonly=readonly_paths(
                self.worktree,
                [name for name in tracked if name],
                protected=PROTECTED,
                append_only=APPEND_ONLY,
                matches=matches,
            ).paths,
            home=self.home,
            # As ralph does: its own Python stays reachable wherever it is installed.
            binds=program_paths(self.home, os.environ.get("PATH", "")),
            network=False,
            bwrap=sandbox.find_bwrap() or "bwrap",
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def run(
        self, script: str, spec: SandboxSpec | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = bwrap_argv(spec or self.spec(), ["sh", "-c", script])
        environment = env or {"PATH": os.environ["PATH"], "HOME": str(self.home), "LANG": "C"}
        return subprocess.run(
            argv, env=environment, capture_output=True, text=True, timeout=60, check=False
        )

    def python(
        self, code: str, spec: SandboxSpec | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = bwrap_argv(spec or self.spec(), [sys.executable, "-I", "-c", code])
        environment = {"PATH": os.environ["PATH"], "HOME": str(self.home)}
        return subprocess.run(
            argv, env=environment, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def box(tmp_path: Path) -> Box:
    """A repository with specs, docs/specs, migrations, ralph.toml and AGENTS.md committed,
    a worktree of it under .ralph/worktrees/w0, and a home with a fake SSH key."""
    tmp_path = tmp_path.resolve()
    repo = tmp_path / "repo"
    files = {
        "specs/a.md": "# A\n",
        "docs/specs/b.md": "# B\n",
        "docs/other.md": "other\n",
        "migrations/001.sql": "create table t (id int);\n",
        "ralph.toml": 'checks = ["true"]\n',
        "AGENTS.md": "# Agents\n",
        "code.py": "print('hello')\n",
    }
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    worktree = repo / ".ralph" / "worktrees" / "w0"
    git(repo, "worktree", "add", "-q", "--detach", str(worktree), "HEAD")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(FAKE_KEY)
    outside = tmp_path / "outside"
    outside.mkdir()
    return Box(repo, worktree, repo / ".git", home, outside)


def host_state(box: Box) -> list[str]:
    """Everything an escape would change: the worktree's status, the user's tree, the git
    directory's hooks and config, the folder outside the repository."""
    return [
        *git(box.worktree, "status", "--porcelain", "--untracked-files=all").splitlines(),
        *git(box.repo, "status", "--porcelain", "--untracked-files=all").splitlines(),
        "hooks: " + ",".join(sorted(p.name for p in (box.common / "hooks").iterdir())),
        "config: " + (box.common / "config").read_text(),
        "outside: " + ",".join(sorted(p.name for p in box.outside.iterdir())),
    ]


def test_probe_says_the_sandbox_works_here() -> None:
    """``ralph doctor``'s probe runs the real flags and says the sandbox works, with facts."""
    works, message = sandbox.probe()
    assert works, message
    assert "bubblewrap" in message


def test_the_worktree_is_writable(box: Box) -> None:
    """The agent edits, creates and deletes files in its worktree; the host sees it all."""
    result = box.run(
        "echo changed >> code.py && echo new > new.txt && mkdir -p pkg/sub && "
        "echo x > pkg/sub/m.py && rm docs/other.md && git status --porcelain"
    )
    assert result.returncode == 0, result.stderr
    assert (box.worktree / "new.txt").read_text() == "new\n"
    assert (box.worktree / "pkg/sub/m.py").exists()
    assert not (box.worktree / "docs/other.md").exists()
    assert "changed" in (box.worktree / "code.py").read_text()
    assert "?? new.txt" in result.stdout  # git reads the repository through the read-only .git


def test_nothing_is_left_behind_by_the_mounts(box: Box) -> None:
    """A run that changes nothing leaves the worktree and the user's tree exactly as they were
    (bwrap makes no mount point stubs on the host)."""
    before = host_state(box)
    result = box.run("true")
    assert result.returncode == 0, result.stderr
    assert host_state(box) == before


ATTACKS = {
    "write a hook into the repository's git directory": (
        "echo 'curl evil' > {common}/hooks/pre-commit && chmod +x {common}/hooks/pre-commit"
    ),
    "rewrite the repository's git config": "echo '[core] hooksPath = /x' >> {common}/config",
    "replace the worktree's .git file": "echo 'gitdir: /tmp/evil' > .git",
    "stage and commit with git": "git add -A && git -c user.name=x -c user.email=x commit -qm x",
    "edit a spec": "echo evil >> specs/a.md",
    "add a spec": "echo evil > specs/new.md",
    "delete a spec": "rm -f specs/a.md",
    "edit a spec through a symlink": "ln -s specs/a.md lnk && echo evil >> lnk",
    "hard-link a spec": "ln specs/a.md hard && echo evil >> hard",
    "rename the specs folder": "mv specs specs2 && mkdir specs && echo evil > specs/a.md",
    "rename the specs' parent to escape": (
        "mv docs docs2 && mkdir -p docs/specs && echo evil > docs/specs/b.md"
    ),
    "edit the settings file": "echo 'checks = []' > ralph.toml",
    "replace the settings file by renaming": "echo 'checks = []' > t && mv -f t ralph.toml",
    "edit the memory file": "echo evil >> AGENTS.md",
    "delete the memory file": "rm -f AGENTS.md",
    "change an append-only file": "echo 'drop table t;' >> migrations/001.sql",
    "delete an append-only file": "rm -f migrations/001.sql",
    "rename the append-only folder": "mv migrations m2 && mkdir migrations",
    "read the user's SSH key": "cat {home}/.ssh/id_rsa || cat ~/.ssh/id_rsa",
    "read the system's password hashes": "grep -q '^root:' /etc/shadow",
    "read the SSH host keys": "cat /etc/ssh/ssh_host_*_key | grep -q PRIVATE",
    "write into the user's own work tree": "echo evil > {repo}/code.py",
    "write outside the repository": "echo evil > {outside}/evil.txt",
    "write into the system": "echo evil > /etc/ralph-sandbox-test",
    "remount the specs writable": "mount -o remount,rw,bind specs && echo evil >> specs/a.md",
    "unmount the specs": "umount -l specs; echo evil >> specs/a.md",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_a_hostile_command_is_blocked(box: Box, attack: str) -> None:
    """Each attack fails inside the sandbox and leaves the host exactly as it was."""
    before = host_state(box)
    spec_text = (box.worktree / "specs/a.md").read_text()
    script = "set -e\n" + ATTACKS[attack].format(
        common=box.common, home=box.home, repo=box.repo, outside=box.outside
    )
    result = box.run(script)
    assert result.returncode != 0, f"{attack}: succeeded\n{result.stdout}{result.stderr}"
    assert "fake-key-for-the-sandbox-test" not in result.stdout
    # What the attack made in the worktree on its way (a symlink, a temporary file) stays:
    # the worktree is writable, and the gate refuses such a change.
    assert [line for line in host_state(box) if line not in ("?? lnk", "?? t")] == before
    assert (box.worktree / "specs/a.md").read_text() == spec_text
    assert not Path("/etc/ralph-sandbox-test").exists()


def test_new_files_may_be_added_to_an_append_only_folder(box: Box) -> None:
    """Append-only: existing files are read-only, but a new file is allowed."""
    result = box.run("echo 'create table u (id int);' > migrations/002.sql")
    assert result.returncode == 0, result.stderr
    assert (box.worktree / "migrations/002.sql").exists()


def test_the_home_directory_is_empty_but_for_what_is_bound(box: Box) -> None:
    """HOME is an empty tmpfs; a bound config folder is writable, a bound file read-only."""
    (box.home / ".agent").mkdir()
    (box.home / ".agent" / "settings.json").write_text("{}")
    binds = (
        Bind(box.home / ".agent", "rw"),
        Bind(box.home / ".agent" / "settings.json", "ro"),
    )
    spec = box.spec(binds=binds)
    result = box.run(
        "ls -A ~; echo session > ~/.agent/session.json; echo evil > ~/.agent/settings.json",
        spec=spec,
    )
    assert result.stdout.split() == [".agent"]
    assert (box.home / ".agent" / "session.json").read_text() == "session\n"
    assert (box.home / ".agent" / "settings.json").read_text() == "{}"
    assert result.returncode != 0


def test_programs_under_the_home_directory_still_run(box: Box, tmp_path: Path) -> None:
    """A tool installed under the home directory (on PATH, or a symlink into ~/.local/share)
    runs in the sandbox, while the rest of ~/.local stays hidden."""
    tool = box.home / ".tool" / "bin"
    tool.mkdir(parents=True)
    (tool / "hello").write_text("#!/bin/sh\necho hello-from-tool\n")
    (tool / "hello").chmod(0o755)
    shared = box.home / ".local" / "share" / "hello2" / "bin"
    shared.mkdir(parents=True)
    (shared / "hello2").write_text("#!/bin/sh\necho hello-from-share\n")
    (shared / "hello2").chmod(0o755)
    local_bin = box.home / ".local" / "bin"
    local_bin.mkdir(parents=True)
    (local_bin / "hello2").symlink_to(shared / "hello2")
    (box.home / ".local" / "share" / "keyrings").mkdir()
    search = f"{tool}:{local_bin}:{os.environ['PATH']}"
    spec = box.spec(binds=program_paths(box.home, search))
    env = {"PATH": search, "HOME": str(box.home)}
    result = box.run("hello && hello2 && ls ~/.local/share", spec=spec, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hello-from-tool", "hello-from-share", "hello2"]


def test_ralphs_python_runs_with_the_real_home_hidden(box: Box) -> None:
    """With the real home directory hidden, ralph's own Python (here under ~/.pyenv) still
    runs: its prefix and base prefix are bound read-only."""
    home = Path.home().resolve()
    spec = box.spec(home=home, binds=program_paths(home, os.environ["PATH"]))
    result = box.python("import sys, ralph; print('ok', sys.version_info[0])", spec=spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 3"


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP listener on the host's loopback: the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
except OSError as exc:
    print("blocked", exc.errno)
else:
    print("connected")
"""


@pytest.mark.parametrize(("network", "expected"), [(False, "blocked"), (True, "connected")])
def test_the_host_loopback_is_out_of_reach_with_the_network_off(
    box: Box, listener: int, network: bool, expected: str
) -> None:
    """network off: a service on the host's 127.0.0.1 can't be reached; on: it can."""
    result = box.python(CONNECT.format(port=listener), spec=box.spec(network=network))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == expected


OUTSIDE = """
import socket, sys
interfaces = [line.split(":")[0].strip() for line in open("/proc/self/net/dev").readlines()[2:]]
routes = open("/proc/self/net/route").read().splitlines()[1:]
if interfaces != ["lo"] or routes:
    print("network", interfaces, len(routes))
    sys.exit(0)
try:  # no interface but loopback and no route: the connect can't send a packet
    socket.create_connection(("192.0.2.1", 80), timeout=3).close()
except OSError as exc:
    print("blocked", exc.errno)
else:
    print("connected")
"""


def test_no_address_outside_is_reachable_with_the_network_off(box: Box) -> None:
    """network off: only a loopback of its own, no route; connecting out fails at once."""
    result = box.python(OUTSIDE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "blocked", result.stdout


UNIX = """
import socket
client = socket.socket(socket.AF_UNIX)
try:
    client.connect({path!r})
except OSError as exc:
    print("blocked", exc.errno)
else:
    print("connected")
"""


@pytest.mark.parametrize(("network", "expected"), [(False, "blocked"), (True, "connected")])
def test_unix_sockets_of_the_host_are_out_of_reach_with_the_network_off(
    box: Box, network: bool, expected: str
) -> None:
    """A unix socket outside /run and /tmp (a database's, say) is covered with the network
    off, though --unshare-net alone leaves it reachable; /run is empty either way."""
    path = Path("/var/tmp") / f"ralph-sandbox-{uuid.uuid4().hex[:12]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    try:
        result = box.python(UNIX.format(path=str(path)), spec=box.spec(network=network))
        listing = box.run("ls -A /run", spec=box.spec(network=network))
    finally:
        server.close()
        path.unlink()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == expected
    assert listing.stdout.strip() == ""


def test_the_sandbox_cant_kill_ralph(box: Box) -> None:
    """Killing ralph (here a stand-in process), the sandbox's parent or its init fails: the
    sandbox has its own PID namespace."""
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        result = box.run(f"kill -9 {stand_in.pid}; kill -9 $PPID; kill -9 1; sleep 0.2; echo alive")
        assert result.stdout.strip() == "alive"
        assert stand_in.poll() is None
    finally:
        stand_in.kill()
        stand_in.wait()


def test_root_keeps_no_capability_inside(box: Box) -> None:
    """Whoever runs ralph (root too), the sandbox has no capability and its own user and PID
    namespaces."""
    result = box.run("grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; echo pid=$$")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t") for line in result.stdout.splitlines() if ":\t" in line)
    assert int(fields["CapEff"], 16) == 0
    assert int(fields["CapBnd"], 16) == 0
    assert result.stdout.split("pid=")[1].strip() == "2"  # bwrap's init is 1


def test_the_environment_is_only_what_bwrap_was_started_with(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret in ralph's environment is neither in the command's environment nor in bwrap's
    own init's (/proc/1/environ), when bwrap starts with the filtered one; nothing is passed
    on the command line."""
    monkeypatch.setenv("DATABASE_URL", "postgres://u:sekrit@h/db")
    argv = bwrap_argv(box.spec(), ["true"])
    assert "--setenv" not in argv and "--clearenv" not in argv
    result = box.run("env; tr '\\0' '\\n' < /proc/1/environ")
    assert result.returncode == 0, result.stderr
    assert "sekrit" not in result.stdout
    assert "HOME=" in result.stdout


def test_the_sandbox_dies_with_its_parent(box: Box) -> None:
    """SIGKILL to the process that started bwrap (ralph) ends everything in the sandbox."""
    marker = f"{time.time_ns() % 10**6 + 100}.5"
    argv = bwrap_argv(box.spec(), ["sh", "-c", f"sleep {marker} & sleep {marker}"])
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)",
            *argv,
        ],
        env={"PATH": os.environ["PATH"], "HOME": str(box.home)},
    )
    try:
        # Both sleeps running: bwrap has armed its parent-death signal long before.
        started = wait_for(lambda: len(with_marker(marker, b"sleep\0")) == 2)
        assert started, "the sandbox didn't start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: not with_marker(marker)), with_marker(marker)
    finally:
        parent.kill()
        for pid in with_marker(marker):
            os.kill(pid, signal.SIGKILL)


def with_marker(marker: str, program: bytes = b"") -> list[int]:
    """Live processes whose command line holds ``marker`` (and starts with ``program``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and cmdline.startswith(program) and state not in "ZX":
            found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_readonly_paths_follow_the_gates_globs(box: Box) -> None:
    """``DIR/**`` protects the folder itself; other globs and append-only globs give the
    existing files they match; symlinks and untracked files are left to the gate."""
    (box.worktree / "notes.lock").write_text("x")
    (box.worktree / "link.lock").symlink_to("code.py")
    tracked = ["specs/a.md", "docs/specs/b.md", "code.py", "migrations/001.sql", "link.lock"]
    found = readonly_paths(
        box.worktree,
        tracked,
        protected=["specs/**", "docs/specs/**", "*.lock", "missing.toml"],
        append_only=["migrations/**"],
        matches=matches,
    )
    relative = sorted(str(path.relative_to(box.worktree)) for path in found.paths)
    assert relative == ["docs/specs", "migrations/001.sql", "specs"]
    assert found.left_to_gate == ()


def test_past_the_limit_files_are_left_to_the_gate_protected_ones_first(box: Box) -> None:
    """Per-file mounts are capped (each costs more than the last): protected files are
    mounted before append-only ones, folders always; the rest is said, not dropped."""
    found = readonly_paths(
        box.worktree,
        ["specs/a.md", "code.py", "migrations/001.sql", "AGENTS.md"],
        protected=["specs/**", "code.py", "AGENTS.md"],
        append_only=["migrations/**"],
        matches=matches,
        limit=2,
    )
    assert [p.relative_to(box.worktree).as_posix() for p in found.paths] == [
        "AGENTS.md",
        "code.py",
        "specs",
    ]
    assert found.left_to_gate == (box.worktree / "migrations/001.sql",)


def test_mounts_come_in_the_order_that_keeps_them_shut(box: Box) -> None:
    """/tmp's tmpfs before anything under /tmp; the worktree before its read-only paths; the
    folders between the worktree and a read-only path bound before it."""
    argv = bwrap_argv(box.spec(), ["true"])
    position = {(argv[i], argv[i + 1]): i for i in range(len(argv) - 1)}
    worktree = str(box.worktree)
    assert position[("--tmpfs", "/tmp")] < position[("--tmpfs", str(box.home))]
    assert position[("--bind", worktree)] < position[("--bind", f"{worktree}/docs")]
    assert (
        position[("--bind", f"{worktree}/docs")] < position[("--ro-bind", f"{worktree}/docs/specs")]
    )
    assert position[("--ro-bind-try", str(box.repo))] < position[("--bind", worktree)]
    assert argv[-2:] == ["--", "true"]


def test_a_host_folder_can_be_the_private_tmp(box: Box, tmp_path: Path) -> None:
    """With ``tmp``, /tmp is that folder (on disk, emptied by ralph between attempts), also
    reachable at its own path for a TMPDIR that names it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = box.run(
        f"echo a > /tmp/a && echo b > {scratch}/b && ls /tmp", spec=box.spec(tmp=scratch)
    )
    assert result.returncode == 0, result.stderr
    assert {p.name for p in scratch.iterdir()} >= {"a", "b"}


def test_the_probe_says_why_when_the_kernel_refuses(box: Box) -> None:
    """Where no user namespace may be made (here: inside a sandbox that forbids nesting), the
    probe says the machine can't, in bwrap's words, with what to do about it."""
    code = "from ralph.runtime import sandbox; r = sandbox.check(); print(r.kind); print(r.message)"
    spec = box.spec(network=True)
    argv = bwrap_argv(spec, [sys.executable, "-c", code])
    argv.insert(1, "--disable-userns")
    result = subprocess.run(
        argv,
        env={"PATH": os.environ["PATH"], "HOME": str(box.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kind, message = result.stdout.splitlines()
    assert kind == "forbidden"
    assert "Creating new namespace failed" in message and "user.max_user_namespaces" in message
