"""IMAP_PIPELINE_LOG_FORMAT=json: the roles' lines are JSON, a task's lines carry its ids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.config import Settings
from pipeline.dev.ports import free_port
from tests.support.grants import connect
from tests.support.processes import RoleProcess, pipeline_env
from tests.support.services import MailUser
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

WAIT_S = 120


def json_lines(process: RoleProcess) -> list[dict[str, Any]]:
    events = []
    for line in process.log().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_json_lines_carry_grant_and_folder_ids_of_the_task(
    settings: Settings, mail_user: MailUser, celery_client: None, tmp_path: Path
) -> None:
    from workers import enqueue

    api_port = free_port()
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_LOG_FORMAT="json",
        IMAP_PIPELINE_SYNC_CONCURRENCY="1",
        IMAP_PIPELINE_API_PORT=str(api_port),
    )
    sync = RoleProcess("sync", env, tmp_path).start()
    api = RoleProcess("api", env, tmp_path).start()
    try:
        grant_id = connect(settings, mail_user)
        enqueue.sync_grant(grant_id, "generic")

        def folder_syncs() -> list[dict[str, Any]]:
            return [
                e
                for e in json_lines(sync)
                if e.get("task_name") == "pipeline.sync.folder" and "succeeded" in e["message"]
            ]

        wait_for(folder_syncs, lambda: f"a folder sync:\n{sync.log()[-3000:]}", WAIT_S, 0.3)
        done = folder_syncs()
        assert done[0]["grant_id"] == grant_id
        assert done[0]["folder_id"]
        assert done[0]["task_id"]

        def logged_a_request() -> bool:  # uvicorn's lines are JSON too
            try:
                httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=5)
            except httpx.HTTPError:
                return False
            return any("/healthz" in e["message"] for e in json_lines(api))

        wait_for(logged_a_request, lambda: f"a request logged:\n{api.log()[-3000:]}", WAIT_S, 0.3)
        assert all(line.startswith("{") for line in api.log().splitlines() if line.strip())
    finally:
        sync.stop()
        api.stop()
