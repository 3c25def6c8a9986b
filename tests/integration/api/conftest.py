"""Fixtures for the HTTP API: a real uvicorn server on a free port (see ``api_support``)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from api_support import (
    API_KEY,
    OTHER_KEY,
    SERVER_START_TIMEOUT_S,
    ApiServer,
    InlineDrains,
    Receiver,
)
from pydantic import SecretStr

from pipeline.api import create_app
from pipeline.config import Settings
from pipeline.config.webhooks import WebhookSettings
from pipeline.db import session_scope
from pipeline.dev.ports import free_port
from pipeline.models import Grant
from tests.support.settings import section_changed
from tests.support.waiting import wait_for


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    """The test settings with two API keys; IMAP/SMTP hosts on this machine are allowed (the
    test Dovecot and SMTP server listen on 127.0.0.1), as an operator would allow them."""
    allowed = settings.model_copy(
        update={
            "api_keys": SecretStr(f"{API_KEY},{OTHER_KEY}"),
            "mail_allowed_networks": [ipaddress.ip_network("127.0.0.0/8")],
        }
    )
    # a drain QUITs as soon as it is done: the test SMTP server stops with its test
    return section_changed(allowed, "outbound", smtp_idle_close_s=0.0)


@pytest.fixture
def api(api_settings: Settings) -> Iterator[ApiServer]:
    """The API served by uvicorn in a thread on a free port."""
    port = free_port()
    server_info = ApiServer(url=f"http://127.0.0.1:{port}", settings=api_settings)

    def record(grant_id: str, provider: str) -> None:
        # Enqueue must come after commit: the grant has to be visible to another session.
        with session_scope(api_settings.require_database_url()) as db:
            if db.get(Grant, grant_id) is None:
                server_info.enqueued_uncommitted.append(grant_id)
        server_info.enqueued.append((grant_id, provider))

    def kick() -> None:
        server_info.kicks += 1

    # sends are drained in this process, on threads, by the workers' own code
    drains = InlineDrains(api_settings, kick)

    # webhook destinations on this machine are allowed (the test receiver listens on 127.0.0.1)
    hooks = WebhookSettings(allowed_networks=["127.0.0.0/8"])  # type: ignore[list-item]
    app = create_app(
        api_settings.model_copy(update={"webhooks": hooks}),
        enqueue_sync=record,
        kick_webhooks=kick,
        enqueue_send=drains.enqueue,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            pytest.fail("the API server did not start", pytrace=False)
        return bool(server.started)

    wait_for(started, "the API server to start", SERVER_START_TIMEOUT_S, interval_s=0.02)
    yield server_info
    server.should_exit = True
    thread.join(timeout=15)
    drains.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1."""
    server = Receiver()
    yield server
    server.close()
