"""The README's first command: `imap-pipeline up --demo` on a machine with nothing configured."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.dev.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

UP_TIMEOUT_S = 180  # embedded Postgres, Redis, Dovecot, every role, and the demo's sync
STOP_TIMEOUT_S = 60


def test_up_demo_runs_the_whole_pipeline_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    api_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        IMAP_PIPELINE_DATA_DIR=str(data_dir),
        IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT=str(free_port()),
        IMAP_PIPELINE_EMBEDDED_REDIS_PORT=str(free_port()),
        IMAP_PIPELINE_FLOWER_PORT=str(free_port()),
        IMAP_PIPELINE_API_PORT=str(api_port),
        IMAP_PIPELINE_SYNC_CONCURRENCY="2",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "up", "--demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(up.stdout or []), daemon=True)
    reader.start()
    try:
        started = time.monotonic()

        def demo_grant() -> str | None:
            assert up.poll() is None, "up exited early:\n" + "".join(lines[-60:])
            found = [re.search(r"demo mailbox connected as grant (\S+)", line) for line in lines]
            return next((m.group(1) for m in found if m), None)

        wait_for(demo_grant, lambda: "a demo grant:\n" + "".join(lines[-60:]), UP_TIMEOUT_S, 0.5)
        grant_id = demo_grant()
        assert grant_id is not None
        # A second terminal finds the services through runtime.env in the data folder.
        cli_env = {k: v for k, v in env.items() if not k.startswith("IMAP_PIPELINE_EMBEDDED")}
        view: dict[str, object] = {}

        def synced() -> bool:
            nonlocal view
            status = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "grants", "status", grant_id, "--json"],
                env=cli_env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert status.returncode == 0, status.stderr
            view = json.loads(status.stdout)
            return view.get("sync_state") == "synced"

        left_s = UP_TIMEOUT_S - (time.monotonic() - started)  # one deadline for both waits
        wait_for(synced, lambda: "the demo synced:\n" + "".join(lines[-60:]), left_s, 1)
        folders = view["folders"]
        assert isinstance(folders, list)
        stored = sum(f["stored"] for f in folders)
        assert stored > 100  # a few hundred seeded, some older than the window
        assert {f["role"] for f in folders} >= {"inbox", "sent"}
        # the HTTP API role answers with the key `up` created
        key = (data_dir / "api.key").read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{api_port}/v3/grants",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert [g["id"] for g in response.json()["data"]] == [grant_id]
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C does
        code = up.wait(timeout=STOP_TIMEOUT_S)
        reader.join(timeout=10)
        if up.stdout is not None:
            up.stdout.close()
    output = "".join(lines)
    assert code == 0, output[-4000:]
    assert "Traceback" not in output
    assert not (data_dir / "runtime.env").exists()
