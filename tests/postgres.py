"""A real PostgreSQL server for the tests, and a fresh database for each test.

The server is the first of these that works:
1. the one at ``RALPHD_TEST_DATABASE_URL`` (a role that may create databases). Not
   ``RALPH_...``: ralph reads every ``RALPH_`` variable as a setting and refuses unknown ones;
2. a local server answering at 127.0.0.1:5432 as user ``postgres`` without a password;
3. one started for this test session in a temporary folder from the installed server
   programs (``initdb``/``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin). As root it
   runs as the ``postgres`` user, or ``nobody``: PostgreSQL refuses to run as root.
Otherwise the test is skipped with a reason saying how to get one, and the reason is added
to ``SKIPS``. With ``RALPHD_REQUIRE_POSTGRES=1`` (CI) it fails instead of skipping.

Use it with ``pytest_plugins = ["postgres"]`` and the ``postgres_url`` fixture.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import importlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

URL_ENV = "RALPHD_TEST_DATABASE_URL"
REQUIRE_ENV = "RALPHD_REQUIRE_POSTGRES"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
HOW_TO_GET_ONE = (
    "install PostgreSQL's server (apt-get install postgresql) so the tests can start one, "
    f"or set {URL_ENV} to a server where the role may create databases"
)

SKIPS: list[str] = []
"""Why PostgreSQL tests were skipped in this process (empty when none were)."""


class Server:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, admin_url: str, origin: str) -> None:
        self.admin_url = admin_url
        self.origin = origin

    def url(self, dbname: str) -> str:
        """The admin URL pointed at another database."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.admin_url, dbname=dbname)

    def create_database(self) -> str:
        name = f"ralph_test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement.encode())


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then the newest Debian layout."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves, or when root an unprivileged account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root with neither a postgres nor a nobody account")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_temporary(binaries: Path) -> Server:
    """initdb and pg_ctl start in a fresh folder; stopped and removed when pytest exits."""
    account = _server_user()
    base = Path(tempfile.mkdtemp(prefix="ralph-pg-"))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)

    def run(*args: str) -> None:
        subprocess.run(
            [str(binaries / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            cwd=base,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )

    port = _free_port()
    data = base / "data"
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
    run(
        "pg_ctl", "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o", options, "start"
    )

    def stop() -> None:
        subprocess.run(
            [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
        )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    return Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", f"started in {base}")


@functools.cache
def _find_server() -> Server | str:
    """The server for this test process, or why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[dev,queue]'"
    configured = os.environ.get(URL_ENV)
    if configured:
        if not _answers(configured):
            raise RuntimeError(f"{URL_ENV} is set but no PostgreSQL answers there")
        return Server(configured, URL_ENV)
    if _answers(LOCAL_URL):
        return Server(LOCAL_URL, "local server at 127.0.0.1:5432")
    binaries = _server_binaries()
    if binaries is None:
        return f"no PostgreSQL server found: {HOW_TO_GET_ONE}"
    try:
        return _start_temporary(binaries)
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return f"could not start PostgreSQL from {binaries}: {exc} {detail.decode()[-300:]}"


def server_or_skip() -> Server:
    """The server, or skip (fail under RALPHD_REQUIRE_POSTGRES) saying how to get one."""
    found = _find_server()
    if isinstance(found, Server):
        return found
    _skip(found)


def needs(module: str) -> None:
    """Skip the calling test module when ``module`` (from the queue extra) is missing, or
    fail it under RALPHD_REQUIRE_POSTGRES."""
    try:
        importlib.import_module(module)
    except ImportError:
        _skip(f"{module} is not installed: pip install -e '.[dev,queue]'")


def _skip(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"PostgreSQL tests required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    SKIPS.append(reason)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def postgres_server() -> Server:
    """The PostgreSQL server shared by this test process."""
    return server_or_skip()


@pytest.fixture
def postgres_url(postgres_server: Server) -> Iterator[str]:
    """A URL to a database of this test's own, dropped afterwards."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


class Relay:
    """A TCP relay in front of the server, to freeze or cut ralph's connections mid-run."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.refusing = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, server_url: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(server_url, host="127.0.0.1", port=str(self.port))

    def freeze(self) -> None:
        """Connections stay open but nothing gets through: a silent network."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        """Every connection is reset and new ones are closed at once: the server is gone."""
        self.refusing = True
        with self.lock:
            for sock in self.sockets:
                _close(sock)
            self.sockets.clear()

    def restore(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.cut()
        self.flowing.set()
        _close(self.listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a reset or a cut ends this direction
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side or a cut
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
