"""A Ctrl-C that lands while ``up`` spawns a child (a server or a role) stops it cleanly.

``fork`` runs Python callbacks in the parent (logging's lock release among them); a signal
handler that raised there had its exception printed as "Exception ignored … Traceback" and lost,
so the stop came only after everything had started (seen in CI, once in 1,490 tests). Each case
runs in its own interpreter: the at-fork hook that sends the signal cannot be unregistered.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from pipeline.config import Settings
    from pipeline.dev.processes import ChildProcess
    from pipeline.dev.up import _Interrupted, _Up

    data = Path(sys.argv[1])
    up = _Up(Settings(data_dir=data), demo=False)
    up._install_signal_handlers()
    sent = []

    def interrupt_during_fork():  # Ctrl-C while the parent is still inside fork's callbacks
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    os.register_at_fork(after_in_parent=interrupt_during_fork)
    child = ChildProcess("sleeper", ["sleep", "60"], log_path=data / "sleeper.log")
    try:
        child.start()
        print("not interrupted", flush=True)
    except _Interrupted:
        print("interrupted; child recorded:", child.pid is not None, flush=True)
    finally:
        child.kill()
    print("stop requested:", up.stop_requested.is_set(), flush=True)
    """
)


def test_a_ctrl_c_during_a_spawn_interrupts_after_the_child_is_recorded(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert done.stdout.splitlines() == [
        "interrupted; child recorded: True",
        "stop requested: True",
    ], done.stdout + done.stderr
