"""The process runner without cgroups: what it stops when a child ends, and what it spares.

Each case runs in a Python process of its own (it becomes a subreaper, as ralph does), with
real children: a supervised child whose tree tries to escape, and helpers of the parent's
own, like the git commands other workers run meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

SCENARIO = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from pathlib import Path

    import anyio

    from ralph.runtime import processes
    from ralph.runtime.processes import ProcessTree, Stop, run_in_group

    processes.become_subreaper()
    # A helper of the parent's own (another worker's git, say): in the parent's session.
    helper = subprocess.Popen(["sleep", "30"])
    # The child escapes: a grandchild in a session of its own, orphaned onto the parent.
    escape = (
        "python3 -c 'import os, time\\n"
        "if os.fork() == 0:\\n"
        "    os.setsid()\\n"
        "    if os.fork() == 0:\\n"
        "        open(\\"escaped.pid\\", \\"w\\").write(str(os.getpid())); time.sleep(30)\\n"
        "    os._exit(0)\\n"
        "time.sleep(1)'"
    )

    async def main():
        return await run_in_group(
            ["sh", "-c", escape],
            cwd=Path.cwd(),
            env=dict(os.environ),
            log_path=Path("child.log"),
            timeout=20,
            grace=1,
            stop=Stop(),
            tree=ProcessTree(),
        )

    result = anyio.run(main)
    escaped = int(Path("escaped.pid").read_text())
    time.sleep(0.2)
    processes.reap_orphans()
    alive = lambda pid: Path(f"/proc/{pid}").exists() and b") Z" not in Path(
        f"/proc/{pid}/stat"
    ).read_bytes()
    print(json.dumps({
        "outcome": result.outcome,
        "helper_alive": helper.poll() is None,
        "escaped_alive": alive(escaped),
    }))
    helper.kill()
    """
)


def test_an_escaped_orphan_is_stopped_and_the_parents_own_helpers_are_not(tmp_path) -> None:
    """Without a cgroup, the one supervised child's orphans (even in a new session) go with
    it; a process the parent started itself meanwhile, in its own session, is left alone.
    (Stopping those once killed another worker's `git write-tree` mid-landing.)"""
    result = subprocess.run(
        [sys.executable, "-c", SCENARIO],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"outcome": "exited", "helper_alive": True, "escaped_alive": False}
