"""The sandbox: bubblewrap's command line for an agent (or a check), and the doctor's probe.

``bwrap_argv`` turns a ``SandboxSpec`` into ``bwrap ... -- COMMAND``. Inside, the whole
machine is read-only; the worktree is the one writable tree; its ``.git`` file, the
repository's git directory and the protected paths are read-only again on top of it; the
home directory is an empty tmpfs but for the binds the caller names (the agent's own
configuration, programs installed under it, ``sandbox_paths``); ``/tmp`` and ``/run`` are
private; the network is the host's or none at all. A user namespace with every capability
dropped and a PID namespace of its own make this hold for a ralph running as root too.

What the caller must do (the command line can't): start the result with an environment that
is already filtered (``env=``). bwrap's own init process inside the sandbox keeps bwrap's
environment, readable at ``/proc/1/environ``, so ``--clearenv``/``--setenv`` would leak it;
and ``--setenv`` would show every value in ``ps``. Nothing here passes values on the command
line but paths. To stop the sandbox gently, SIGTERM the command (the child of bwrap's init,
a descendant of the bwrap process on the host), not bwrap: bwrap doesn't forward signals,
and with ``--die-with-parent`` a TERM to it SIGKILLs everything inside at once.

``bwrap_argv`` reads the machine (which paths exist, the listening unix sockets, whether
ralph is root) and changes nothing; no mount point is ever created on the host, because
only existing paths are mounted over.

Why the mount order is what it is (each was an escape when reversed, see docs/sandbox.md):
``--tmpfs /tmp`` before any bind under ``/tmp``; every writable bind before the read-only
binds below it; and every folder between the worktree and a read-only path bound onto
itself, so the agent can't rename the protected path's parent away and make a new one.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from ralph.errors import UsageError

Access = Literal["ro", "rw"]
Matcher = Callable[[str, Sequence[str]], bool]
"""``matches(path, globs)``: the gate's glob rule, passed in so there is only one."""

# bwrap from the system's folders only: a bwrap planted earlier on PATH must not be the jail.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NAMESPACE_FLAGS = (
    "--die-with-parent",
    "--new-session",
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--cap-drop",
    "ALL",
)
"""Always on. ``--cap-drop ALL`` matters for root: without it root keeps every capability
inside its user namespace. ``--die-with-parent``: the sandbox dies with ralph."""

# Folders under the home directory too broad to bind whole for a program found in them:
# ~/.local/share holds keyrings, ~/.config every tool's tokens.
_BROAD = frozenset({".local", ".config", ".cache", ".ssh", ".gnupg", "bin", "src"})
# Credential files inside a program's folder (bound read-only whole), hidden behind /dev/null.
_MASKED = (".cargo/credentials", ".cargo/credentials.toml")
_SCAN_LIMIT = 4096
_SO_ACCEPTCON = 0x10000  # /proc/net/unix: a listening socket
_ROOT_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")


class SandboxUnavailable(UsageError):
    """``sandbox = "bwrap"``, but bubblewrap can't run here (the message says why)."""


@dataclass(frozen=True)
class Bind:
    """A path outside the worktree the command needs, read-only or writable."""

    path: Path
    access: Access = "ro"


@dataclass(frozen=True)
class SandboxSpec:
    """Everything ``bwrap_argv`` needs to know; paths are absolute and resolved (no symlink
    on the way), as bwrap mounts on the real path."""

    worktree: Path
    """The one tree the command may change: the attempt's worktree (or the checks' checkout)."""
    git_common_dir: Path
    """The repository's git directory; the worktree's ``.git`` file points into it. Read-only
    wherever it is (also when the repository lives under the home directory)."""
    repository: Path | None = None
    """The user's work tree, read-only: a writable ``sandbox_paths`` entry above it must not
    make the user's own specs writable. None: not bound (then it is read-only or hidden)."""
    readonly: tuple[Path, ...] = ()
    """Paths inside the worktree kept read-only: ``readonly_paths().paths``."""
    home: Path | None = None
    """The user's home directory: an empty tmpfs inside, but for the ``binds`` below it."""
    binds: tuple[Bind, ...] = ()
    """Everything else the command needs: the preset's configuration, programs under the home
    directory (``program_paths``), ``sandbox_paths``, the attempt's prompt (ro), learnings
    file and TMPDIR (rw). Missing ones are skipped; a path named twice takes the later
    access; a deeper bind wins over the one it is inside."""
    tmp: Path | None = None
    """A host folder mounted as ``/tmp`` (and at its own path, so a TMPDIR pointing at it
    works); None: an empty tmpfs."""
    network: bool = True
    """False: a network namespace of its own with only loopback (``--unshare-net``)."""
    bwrap: str = "bwrap"
    """The bwrap program (``find_bwrap()``)."""


def find_bwrap() -> str | None:
    """The bwrap in the system's folders, or None when it isn't installed."""
    return shutil.which("bwrap", path=SYSTEM_PATH)


def bwrap_argv(spec: SandboxSpec, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` in the sandbox ``spec`` describes, at the root of
    the worktree. Start it with the filtered environment as its process environment."""
    worktree = spec.worktree
    return [
        spec.bwrap,
        *namespace_args(spec.network),
        *system_args(spec.tmp, spec.network),
        *_root_args(),
        *_home_args(spec.home),
        *_outside_args(spec),
        *_mask_args(spec),
        "--bind",
        str(worktree),
        str(worktree),
        *_readonly_args(worktree, spec.readonly),
        *_git_args(spec),
        *_socket_args(spec),
        "--chdir",
        str(worktree),
        "--",
        *argv,
    ]


def namespace_args(network: bool) -> list[str]:
    """The namespaces, capabilities and lifetime flags."""
    return [*NAMESPACE_FLAGS, *([] if network else ["--unshare-net"])]


def system_args(tmp: Path | None, network: bool) -> list[str]:
    """The machine read-only, its own /dev and /proc, a private /tmp and an empty /run (unix
    sockets: the Docker daemon, databases, ssh-agent, D-Bus; --unshare-net doesn't cut those).
    """
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    if tmp is None:
        args += ["--tmpfs", "/tmp"]
    else:
        args += ["--bind", str(tmp), "/tmp"]
    args += ["--tmpfs", "/run"]
    resolver = _resolver_under_run() if network else None
    if resolver is not None:  # systemd-resolved: /etc/resolv.conf points into /run
        args += ["--ro-bind-try", str(resolver), str(resolver)]
    return args


def _resolver_under_run() -> Path | None:
    target = Path(os.path.realpath("/etc/resolv.conf"))
    return target.parent if target.is_relative_to("/run") else None


def _root_args() -> list[str]:
    """For a ralph running as root: root without capabilities is still the owner of the
    system's root-only secrets, so the password hashes, the SSH host keys and the TLS private
    keys are covered (nothing to cover for another user: they can't read them anyway)."""
    if os.geteuid() != 0:
        return []
    args: list[str] = []
    files = [Path(name) for name in _ROOT_SECRETS]
    files += sorted(Path("/etc/ssh").glob("ssh_host_*_key"))
    for path in files:
        if _is_real_file(path):
            args += ["--ro-bind", "/dev/null", str(path)]
    if _is_real_dir(Path("/etc/ssl/private")):
        args += ["--tmpfs", "/etc/ssl/private"]
    return args


def _home_args(home: Path | None) -> list[str]:
    if home is None or home == Path("/"):
        return []
    return ["--tmpfs", str(home)]


def _outside_args(spec: SandboxSpec) -> list[str]:
    """The binds outside the worktree, shallow ones first so a deeper bind wins over the one
    it is inside (a read-only ``~/.claude/settings.json`` inside a writable ``~/.claude``)."""
    access: dict[Path, Access] = {}
    if spec.repository is not None:
        access[spec.repository] = "ro"
    for bind in spec.binds:  # a path named twice: the later word wins
        access[bind.path] = bind.access
    if spec.tmp is not None:
        access[spec.tmp] = "rw"
    args: list[str] = []
    for path in sorted(access, key=lambda p: (len(p.parts), str(p))):
        if path.is_relative_to(spec.worktree):
            continue  # the worktree's own rules decide there
        flag = "--bind-try" if access[path] == "rw" else "--ro-bind-try"
        args += [flag, str(path), str(path)]
    return args


def _mask_args(spec: SandboxSpec) -> list[str]:
    """Credential files inside a bound program folder (``~/.cargo/credentials.toml``) are
    covered by ``/dev/null``; binding a file that exists leaves nothing behind on the host."""
    if spec.home is None:
        return []
    args: list[str] = []
    for relative in _MASKED:
        candidate = spec.home / relative
        inside = any(candidate.is_relative_to(bind.path) for bind in spec.binds)
        if inside and _is_real_file(candidate):
            args += ["--ro-bind", "/dev/null", str(candidate)]
    return args


def _readonly_args(worktree: Path, readonly: Iterable[Path]) -> list[str]:
    """Each read-only path, after a writable self-bind of every folder between it and the
    worktree: a mount point can't be renamed (EBUSY), so neither can its parents."""
    paths = sorted(set(readonly), key=lambda p: (len(p.parts), str(p)))
    between: set[Path] = set()
    for path in paths:
        if path.is_relative_to(worktree):
            between.update(parent for parent in path.parents if parent.is_relative_to(worktree))
    between.discard(worktree)
    args: list[str] = []
    for folder in sorted(between, key=lambda p: (len(p.parts), str(p))):
        args += ["--bind", str(folder), str(folder)]
    for path in paths:
        args += ["--ro-bind", str(path), str(path)]
    return args


def _git_args(spec: SandboxSpec) -> list[str]:
    args = ["--ro-bind", str(spec.git_common_dir), str(spec.git_common_dir)]
    dot_git = spec.worktree / ".git"
    if dot_git.exists():
        args += ["--ro-bind", str(dot_git), str(dot_git)]
    return args


def _socket_args(spec: SandboxSpec) -> list[str]:
    """With the network off, every listening unix socket the sandbox could still see
    (``/var/lib/mysql/mysql.sock``, ``/var/tmp/...``) is covered by ``/dev/null``: a
    read-only mount doesn't stop ``connect()``, and ``--unshare-net`` cuts only TCP/IP and
    abstract sockets. Those under ``/tmp``, ``/run`` and the home directory are gone anyway,
    unless a bind brings their folder back."""
    if spec.network:
        return []
    hidden = [Path("/tmp"), Path("/run"), Path("/var/run"), *([spec.home] if spec.home else [])]
    shown = [bind.path for bind in spec.binds if bind.access == "ro"]
    shown += [spec.repository] if spec.repository is not None else []
    # Writable places are skipped: were the socket gone by the time bwrap starts, bwrap would
    # leave an empty file there on the host. (In a read-only place it would fail to start.)
    writable = [bind.path for bind in spec.binds if bind.access == "rw"]
    writable += [path for path in (spec.tmp, spec.worktree) if path is not None]
    args: list[str] = []
    for path in listening_sockets():
        if any(path.is_relative_to(root) for root in writable):
            continue
        gone = any(path.is_relative_to(root) for root in hidden)
        if gone and not any(path.is_relative_to(root) for root in shown):
            continue
        args += ["--ro-bind", "/dev/null", str(path)]
    return args


def listening_sockets(limit: int = 1024) -> list[Path]:
    """The paths of the unix sockets listening on this machine (``/proc/net/unix``)."""
    try:
        lines = Path("/proc/net/unix").read_text(errors="replace").splitlines()[1:]
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) < 8 or not fields[7].startswith("/"):
            continue  # unnamed, or abstract (@...): the network namespace cuts those
        if int(fields[3], 16) & _SO_ACCEPTCON and len(found) < limit:
            found.append(Path(fields[7]))
    return found


@dataclass(frozen=True)
class ReadOnly:
    """What ``readonly_paths`` found: the paths to mount read-only, and the files it left to
    the gate alone (past ``MAX_READONLY_FILES``)."""

    paths: tuple[Path, ...]
    left_to_gate: tuple[Path, ...] = ()


MAX_READONLY_FILES = 200
"""Per-file read-only mounts, at most. bwrap re-reads the mount table for each mount, so
the cost grows with the square of their number: about 75 ms for 100, 180 ms for 200, 2.7 s
for 1,000 (bench/sandbox.py). Protected folders are one mount each and don't count."""


def readonly_paths(
    worktree: Path,
    files: Iterable[str],
    *,
    protected: Sequence[str],
    append_only: Sequence[str],
    matches: Matcher,
    limit: int = MAX_READONLY_FILES,
) -> ReadOnly:
    """The paths to keep read-only in the worktree, from the globs and the tracked ``files``.

    A protected ``DIR/**`` (no wildcard in DIR) is the folder itself: nothing in it can be
    changed, deleted or created. Any other protected glob, and every append-only glob, gives
    the existing files it matches: those can't be changed, deleted or renamed, while new
    files can still be created next to them (for append-only paths that is the point; for
    protected ones the gate refuses them). Symlinks are left to the gate: a bind follows them.
    Past ``limit`` files (protected ones first), the rest are left to the gate.
    """
    folders = {
        worktree / glob.strip("/")[:-3]
        for glob in protected
        if glob.strip("/").endswith("/**") and not _has_wildcard(glob.strip("/")[:-3])
    }
    folders = {folder for folder in folders if _is_real_dir(folder)}
    guarded: set[Path] = set()
    appended: set[Path] = set()
    for name in files:
        path = worktree / name
        if any(path.is_relative_to(folder) for folder in folders) or not _is_real_file(path):
            continue
        if matches(name, protected):
            guarded.add(path)
        elif matches(name, append_only):
            appended.add(path)
    ranked = [*sorted(guarded), *sorted(appended)]
    kept, left = ranked[:limit], ranked[limit:]
    return ReadOnly(tuple(sorted({*folders, *kept})), tuple(left))


def _has_wildcard(text: str) -> bool:
    return any(char in text for char in "*?[")


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _is_real_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def program_paths(
    home: Path, search_path: str, executables: Iterable[str | Path] = ()
) -> tuple[Bind, ...]:
    """Read-only binds for the programs that live under ``home``, so they still run once the
    home directory is an empty tmpfs: ralph's own Python (its prefix, base prefix and
    package; also under ``/tmp``, which is private inside too), each ``PATH`` entry under
    ``home`` (with the tool folder it belongs to, such as ``~/.pyenv`` for ``~/.pyenv/shims``),
    and where the symlinks in those entries and the given ``executables`` really live
    (``~/.local/bin/claude`` points into ``~/.local/share/claude``). Known credential files
    inside them (``~/.cargo/credentials.toml``) are hidden behind ``/dev/null`` by
    ``bwrap_argv``.
    """
    home = home.resolve()
    found: set[Path] = set()
    for prefix in (sys.prefix, sys.base_prefix, Path(__file__).resolve().parents[2]):
        installed = Path(prefix).resolve()
        found.update(_under(home, installed))
        # /tmp is private inside too: a ralph installed there (a CI checkout, say) must run.
        found.update(_under(TMP, installed))
    entries = [Path(entry) for entry in search_path.split(os.pathsep) if entry]
    for entry in entries:
        real = entry.resolve() if entry.is_absolute() else None
        if real is None or not real.is_relative_to(home) or not real.is_dir():
            continue
        found.add(real)
        found.update(_tool_root(home, real))
        found.update(_symlink_targets(home, real))
    for program in executables:
        located = _locate(str(program), search_path)
        if located is not None:
            found.update(_install_root(home, located.resolve()))
    return tuple(Bind(path, "ro") for path in _outermost(found))


TMP = Path("/tmp")


def _under(home: Path, path: Path) -> list[Path]:
    return [path] if path.is_relative_to(home) and path != home and path.exists() else []


def _tool_root(home: Path, path: Path) -> list[Path]:
    """``~/.pyenv`` for ``~/.pyenv/shims``; nothing for a folder too broad to bind whole."""
    first = path.relative_to(home).parts[:1]
    if not first or first[0] in _BROAD:
        return []
    return [home / first[0]]


def _install_root(home: Path, real: Path) -> list[Path]:
    """Where a program under ``home`` is installed: its tool folder, or for one in a broad
    folder its prefix (the folder above ``bin/``) or its own folder, and for a Python
    virtual environment also the Python it was made from."""
    if not real.is_relative_to(home):
        return []
    roots = _tool_root(home, real)
    if not roots:
        parent = real.parent
        roots = [parent.parent if parent.name == "bin" else parent]
    config = roots[0] / "pyvenv.cfg"
    if config.is_file():
        roots += _venv_home(home, config)
    return [root for root in roots if root != home]


def _venv_home(home: Path, config: Path) -> list[Path]:
    for line in config.read_text(encoding="utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():  # the base Python's bin/ folder
            return _install_root(home, Path(value.strip()).resolve() / "python")
    return []


def _symlink_targets(home: Path, folder: Path) -> list[Path]:
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))[:_SCAN_LIMIT]
    except OSError:
        return found
    for entry in entries:
        if entry.is_symlink():
            target = Path(os.path.realpath(entry.path))
            if not target.is_relative_to(folder):
                found.extend(_install_root(home, target))
    return found


def _locate(program: str, search_path: str) -> Path | None:
    if "/" in program:
        path = Path(program)
        return path if path.exists() else None
    located = shutil.which(program, path=search_path)
    return Path(located) if located else None


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths without those inside another one of them (one bind covers both)."""
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: (len(p.parts), str(p))):
        if not any(path.is_relative_to(outer) for outer in kept):
            kept.append(path)
    return kept


# --- ralph doctor ------------------------------------------------------------------------


class ProbeKind(StrEnum):
    """How the probe went."""

    WORKS = "works"
    NOT_INSTALLED = "not_installed"
    """No bwrap on this machine."""
    FORBIDDEN = "forbidden"
    """The kernel or the container refuses the namespaces the sandbox needs."""
    FAILED = "failed"
    """bwrap failed for another reason: the message says which."""


@dataclass(frozen=True)
class Probe:
    """The probe's answer: does the sandbox work here, and if not, why and what to do."""

    kind: ProbeKind
    message: str

    @property
    def works(self) -> bool:
        return self.kind is ProbeKind.WORKS

    @property
    def unavailable(self) -> bool:
        """The machine can't run the sandbox (as opposed to ralph getting it wrong)."""
        return self.kind in (ProbeKind.NOT_INSTALLED, ProbeKind.FORBIDDEN)


# bwrap's words for a kernel that refuses, and what to do about each.
_HINTS = (
    (
        "No permissions to create new namespace",
        "the kernel (or the container's seccomp profile) doesn't allow unprivileged user "
        "namespaces: set kernel.unprivileged_userns_clone=1, or run the container with a "
        "seccomp profile that allows them",
    ),
    (
        "Creating new namespace failed",
        "user namespaces are limited: raise user.max_user_namespaces (sysctl)",
    ),
    (
        "setting up uid map: Permission denied",
        "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+): install an "
        "AppArmor profile for bwrap or set kernel.apparmor_restrict_unprivileged_userns=0",
    ),
    (
        "setting up uid map",
        "the uid map can't be written (nested in another sandbox, or root without CAP_SETFCAP)",
    ),
    (
        "Can't mount proc",
        "the container masks /proc: run it with --security-opt systempaths=unconfined",
    ),
)


def probe() -> tuple[bool, str]:
    """For ``ralph doctor``: whether the sandbox works here, and a line saying why (not)."""
    result = check()
    return result.works, result.message


def check(timeout: float = 20.0) -> Probe:
    """Run the sandbox's real flags (network off, the strictest) on ``/bin/true``."""
    bwrap = find_bwrap()
    if bwrap is None:
        return Probe(
            ProbeKind.NOT_INSTALLED,
            "bubblewrap is not installed: apt-get install bubblewrap (dnf install bubblewrap)",
        )
    argv = [bwrap, *namespace_args(False), *system_args(None, False), "--", "/bin/true"]
    try:
        done = subprocess.run(
            argv, env={"PATH": SYSTEM_PATH}, capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(ProbeKind.FAILED, f"{bwrap} could not run: {exc}")
    if done.returncode == 0:
        return Probe(ProbeKind.WORKS, f"{_version(bwrap)} works here ({_facts(bwrap)})")
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    line = said[-1] if said else f"exit {done.returncode}"
    for words, hint in _HINTS:
        if words in line:
            return Probe(ProbeKind.FORBIDDEN, f"{line} -- {hint} ({_facts(bwrap)})")
    return Probe(ProbeKind.FAILED, f"{line} ({_facts(bwrap)})")


def _version(bwrap: str) -> str:
    try:
        done = subprocess.run(
            [bwrap, "--version"], env={"PATH": SYSTEM_PATH}, capture_output=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return bwrap
    return done.stdout.decode("utf-8", "replace").strip() or bwrap


def _facts(bwrap: str) -> str:
    """What decides whether bwrap can work: setuid or not, the kernel's namespace limits."""
    facts = []
    try:
        setuid = bool(os.stat(bwrap).st_mode & stat.S_ISUID)
        facts.append("setuid" if setuid else "not setuid")
    except OSError:
        pass
    for name, path in (
        ("user.max_user_namespaces", "/proc/sys/user/max_user_namespaces"),
        ("kernel.unprivileged_userns_clone", "/proc/sys/kernel/unprivileged_userns_clone"),
        (
            "kernel.apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        ),
    ):
        try:
            facts.append(f"{name}={Path(path).read_text().strip()}")
        except OSError:
            continue
    return ", ".join(facts)
