"""What every benchmark shares: throwaway repositories, ralph as a real process, /proc readings.

Nothing here is imported by ralph or its tests; the benchmarks print figures and never fail
on a target (that is the issue's "no pass/fail").
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent

# The trivial agent: reads its prompt (as a real CLI would), writes one file, exits 0.
# It is the same shell line in the bare loop and under ralph, so the difference is the
# supervisor's own cost.
TRIVIAL_AGENT = 'cat > /dev/null; echo x > "out-$RALPH_TASK_ID.txt"'

CLK_TCK = os.sysconf("SC_CLK_TCK")


def git(root: Path, *args: str, stdin: bytes | None = None) -> str:
    """Run git in ``root`` and return its standard output; raise on failure."""
    result = subprocess.run(["git", *args], cwd=root, input=stdin, check=True, capture_output=True)
    return result.stdout.decode()


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    return json.dumps(value)


def write_settings(root: Path, agent_script: str, **extra: str) -> None:
    """ralph.toml for the ``command`` agent running ``sh -c agent_script`` and ``true`` as check."""
    command = "sh -c " + _shell_quote(agent_script)
    lines = [
        'agent = "command"',
        f"agent_command = {toml_string(command)}",
        'checks = ["true"]',
        'kill_grace = "2s"',
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    (root / "ralph.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def spec_text(task_id: str, front_matter: bool = False) -> str:
    """A small spec like a person writes: a heading and a sentence, maybe front matter."""
    body = f"# Task {task_id}\n\nWrite out-{task_id}.txt with one line in it.\n"
    if not front_matter:
        return body
    return f"---\nid: {task_id}\npriority: 100\nchecks: []\n---\n{body}"


def task_ids(count: int) -> list[str]:
    width = max(5, len(str(count)))
    return [f"t{index:0{width}d}" for index in range(1, count + 1)]


def make_repo(
    root: Path,
    specs: Sequence[str],
    agent_script: str = TRIVIAL_AGENT,
    *,
    commit_specs: bool = True,
    front_matter: bool = False,
    **settings: str,
) -> Path:
    """A git repository with one commit holding ralph.toml, AGENTS.md and (maybe) the specs."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Bench")
    git(root, "config", "user.email", "bench@example.invalid")
    git(root, "config", "commit.gpgsign", "false")
    (root / "README.md").write_text("benchmark repository\n", encoding="utf-8")
    (root / "AGENTS.md").write_text("# Agents\n", encoding="utf-8")
    write_settings(root, agent_script, **settings)
    spec_dir = root / "specs"
    spec_dir.mkdir()
    (spec_dir / ".keep").write_text("", encoding="utf-8")
    if commit_specs:
        write_specs(root, specs, front_matter=front_matter)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "benchmark setup")
    if not commit_specs:
        write_specs(root, specs, front_matter=front_matter)
    return root


def write_specs(root: Path, specs: Sequence[str], front_matter: bool = False) -> None:
    for task_id in specs:
        (root / "specs" / f"{task_id}.md").write_text(
            spec_text(task_id, front_matter), encoding="utf-8"
        )


def ralph_argv(root: Path, *args: str) -> list[str]:
    """``python -m ralph -C root --log-format json ARGS`` with the venv's interpreter."""
    return [sys.executable, "-m", "ralph", "-C", str(root), "--log-format", "json", *args]


def ralph_env() -> dict[str, str]:
    """This environment without what would make ralph talk to a service manager."""
    env = dict(os.environ)
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        env.pop(key, None)
    return env


def task_commits(root: Path) -> int:
    """How many commits on HEAD carry a Ralph-Task trailer."""
    out = git(root, "log", "--format=%(trailers:key=Ralph-Task,valueonly)")
    return sum(1 for line in out.splitlines() if line.strip())


@contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary folder, removed afterwards unless ``keep``."""
    if keep:
        path = Path(tempfile.mkdtemp(prefix=f"ralph-bench-{prefix}-"))
        print(f"(keeping {path})", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"ralph-bench-{prefix}-") as name:
        yield Path(name)


# --- /proc readings -------------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` figure from /proc/<pid>/status (VmRSS, VmHWM), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int, children: bool = False) -> float | None:
    """User plus system CPU time of ``pid`` (all its threads), from /proc/<pid>/stat.

    With ``children``, the CPU of the children it has reaped (git, checks) is added.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = [int(field) for field in stat[stat.rfind(b")") + 2 :].split()[11:15]]
    return sum(fields if children else fields[:2]) / CLK_TCK


@dataclass
class RssSampler:
    """Samples a process's VmRSS in a thread; keeps the peak (VmHWM is read too)."""

    pid: int
    interval: float = 0.05
    peak_kb: int = 0
    hwm_kb: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            rss = proc_status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            hwm = proc_status_kb(self.pid, "VmHWM") or 0
            self.peak_kb = max(self.peak_kb, rss)
            self.hwm_kb = max(self.hwm_kb, hwm)
            self.samples.append((time.monotonic() - started, rss))
            self._stop.wait(self.interval)


class EventTail:
    """Reads new lines of ``.ralph/events.jsonl`` as ralph appends them."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".ralph" / "events.jsonl"
        self._offset = 0
        self._partial = b""

    def new(self) -> list[dict[str, object]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


# --- reporting ------------------------------------------------------------------------


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table, numbers right-aligned, with a title line."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(header), *cells]) for i in range(len(header))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(header))
    ]
    print(f"\n{title}")
    print(
        "  ".join(
            h.rjust(w) if n else h.ljust(w) for h, w, n in zip(header, widths, numeric, strict=True)
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                c.rjust(w) if n else c.ljust(w)
                for c, w, n in zip(row, widths, numeric, strict=True)
            )
        )
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine() -> Mapping[str, str]:
    """Where the figures come from: CPU, cores, memory, kernel, file system, versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = proc_meminfo_kb("MemTotal")
    tmp = tempfile.gettempdir()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB" if mem_kb else "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git(PROJECT_DIR, "--version").strip().removeprefix("git version "),
        "temp dir": f"{tmp} on {filesystem_of(tmp)}",
    }


def proc_meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def filesystem_of(path: str) -> str:
    """The file system type of the mount holding ``path`` (longest matching mount point)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) <= len(best):
            continue
        if path == parts[1] or path.startswith(parts[1].rstrip("/") + "/"):
            best, kind = parts[1], parts[2]
    return kind


def print_machine() -> None:
    """The machine line, and a warning when something else keeps the CPUs busy."""
    print("machine: " + "; ".join(f"{key} {value}" for key, value in machine().items()))
    busy = busy_cpus()
    if busy > 0.25:
        print(f"warning: {busy:.1f} CPUs busy with other work just before the start; noisy figures")


def busy_cpus(seconds: float = 1.0) -> float:
    """How many CPUs were busy (not idle, not waiting for I/O) over ``seconds``, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    spent = total1 - total0
    return (spent - (idle1 - idle0)) / spent * (os.cpu_count() or 1) if spent else 0.0
