"""The API under hostile sign-ins, run as a user runs it (``imap-pipeline api``): its memory stays
small and authenticated requests stay fast while 45+ sign-ins name servers that trickle their
greeting one byte every 5 s, and a few name one that announces a 2 GB literal.

Wave 1 (4 literal + 4 trickle) fits the gate, so every one of them reaches its server; wave 2
sends 45 at once. Seen before (issue 10): two hosted sign-ins against the 2 GB server took the
API from 135 MB to 3.9 GB; 45 against the trickling server tied up every API thread and
database connection and every authenticated request timed out for 150 s.

The attackers come from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...), so the gate's
total bound is what holds, not only its per-address one. The figures are printed (``-s``).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipeline.config import Settings
from pipeline.dev.ports import free_port
from tests.support.fake_imap import FakeImapProcess
from tests.support.processes import RoleProcess, pipeline_env
from tests.support.services import TlsFiles

pytestmark = pytest.mark.services

API_KEY = "hostile-sign-ins-key-0123456789"
CALLBACK = "http://localhost:8765/callback"
TRICKLE_ATTACKERS = 45  # the count
LITERAL_ATTACKERS = 4  # the issue saw 3.9 GB from two
SIGN_IN_DEADLINE_S = 5.0  # the API answers every sign-in within this (504 past it)
START_TIMEOUT_S = 60.0
ATTACK_WINDOW_S = 12.0  # authenticated requests are timed this long while the attack runs
PROBE_EVERY_S = 0.25
HTTP_TIMEOUT_S = 60.0
# Bounds the API must keep; the seen failure was 150 s and +3.8 GB.
MAX_PROBE_LATENCY_S = 5.0  # generous for a loaded 2-core machine
MAX_RSS_GROWTH_MB = 300.0
_FLOW = re.compile(r"name='flow' value='([^']+)'")


@dataclass
class Attempt:
    kind: str
    status: int
    seconds: float


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def api_process(settings: Settings, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``imap-pipeline api`` on a free port; yields its URL and pid."""
    port = free_port()
    env = pipeline_env(
        settings,
        IMAP_PIPELINE_API_KEYS=API_KEY,
        IMAP_PIPELINE_API_PORT=str(port),
        IMAP_PIPELINE_MAIL_ALLOWED_NETWORKS="127.0.0.0/8",  # the fake servers are local
        IMAP_PIPELINE_API_SIGN_IN_DEADLINE_S=str(SIGN_IN_DEADLINE_S),
    )
    process = RoleProcess("api", env, tmp_path).start()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_healthy(url, START_TIMEOUT_S)
        assert process.process is not None
        yield url, process.process.pid
    finally:
        process.stop()


def fake(tls_files: TlsFiles, script: str) -> FakeImapProcess:
    return FakeImapProcess(
        "--tls",
        "starttls",
        "--cert",
        str(tls_files.cert_file),
        "--key",
        str(tls_files.key_file),
        script=script,
    )


def test_hostile_sign_ins_cost_neither_memory_nor_responsiveness(
    api_process: tuple[str, int], tls_files: TlsFiles
) -> None:
    url, pid = api_process
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=url, headers=auth, timeout=HTTP_TIMEOUT_S) as http:
        r = http.post("/v3/applications/redirect-uris", json={"url": CALLBACK})
        assert r.status_code == 200, r.text
        client_id = http.get("/v3/applications").json()["data"]["application_id"]
        for _ in range(5):  # warm up: the first requests load code and open connections
            assert http.get("/v3/grants").status_code == 200
    baseline_rss = rss_mb(pid)

    attempts: list[Attempt] = []
    lock = threading.Lock()

    def attack(index: int, port: int, kind: str) -> None:
        # every attacker has an address of its own: the per-address bound is not enough
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{2 + index}")
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S, transport=transport) as http:
            started = time.monotonic()
            if index % 5 == 4:  # some through /v3/connect/custom (an application's users)
                status = http.post(
                    "/v3/connect/custom",
                    headers=auth,
                    json={
                        "provider": "imap",
                        "settings": {
                            "imap_username": f"attacker{index}@example.test",
                            "imap_password": "anything",
                            "imap_host": "127.0.0.1",
                            "imap_port": port,
                        },
                    },
                ).status_code
            else:  # most through the public hosted page, as the issue saw
                page = http.get(
                    "/v3/connect/auth",
                    params={"client_id": client_id, "redirect_uri": CALLBACK, "provider": "imap"},
                )
                flow = _FLOW.search(page.text)
                assert flow is not None, page.text[:300]
                status = http.post(
                    "/v3/connect/auth",
                    data={
                        "flow": flow[1],
                        "email": f"attacker{index}@example.test",
                        "password": "anything",
                        "imap_host": "127.0.0.1",
                        "imap_port": str(port),
                    },
                ).status_code
            with lock:
                attempts.append(Attempt(kind, status, time.monotonic() - started))

    latencies: list[float] = []
    peak_rss = baseline_rss

    def wave(targets: list[tuple[int, str]], first_index: int) -> None:
        """Run these sign-ins at once while timing authenticated requests; wait for all."""
        nonlocal peak_rss
        threads = [
            threading.Thread(target=attack, args=(first_index + i, port, kind), daemon=True)
            for i, (port, kind) in enumerate(targets)
        ]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=url, headers=auth, timeout=HTTP_TIMEOUT_S) as http:
            end = time.monotonic() + ATTACK_WINDOW_S
            while time.monotonic() < end or any(t.is_alive() for t in threads):
                started = time.monotonic()
                assert http.get("/v3/grants").status_code == 200
                latencies.append(time.monotonic() - started)
                peak_rss = max(peak_rss, rss_mb(pid))
                time.sleep(PROBE_EVERY_S)
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT_S)

    with fake(tls_files, "greeting-trickle") as trickle, fake(tls_files, "greeting-literal") as big:
        # wave 1 fits the gate (8): every one of them talks to its server
        wave([(big.port, "2 GB literal")] * LITERAL_ATTACKERS + [(trickle.port, "trickle")] * 4, 0)
        assert all(a.status != 429 for a in attempts), attempts
        # wave 2: 45 at once, far more than the gate holds
        wave([(trickle.port, "trickle")] * TRICKLE_ATTACKERS, 20)
    peak_rss = max(peak_rss, rss_mb(pid))

    statuses: dict[int, int] = {}
    for attempt in attempts:
        statuses[attempt.status] = statuses.get(attempt.status, 0) + 1
    refused = [a.seconds for a in attempts if a.status == 429]
    print(
        f"\nhostile sign-ins: {len(attempts)} (wave 1: {LITERAL_ATTACKERS} 2 GB literal + 4 "
        f"trickle; wave 2: {TRICKLE_ATTACKERS} trickle at once), "
        f"statuses {dict(sorted(statuses.items()))}"
        f"\n429 answered in: max {max(refused, default=0):.2f} s"
        f"\nauthenticated GET /v3/grants during the attack: {len(latencies)} requests, "
        f"median {statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        f"\nAPI RSS: {baseline_rss:.0f} MB before, {peak_rss:.0f} MB peak "
        f"(+{peak_rss - baseline_rss:.0f} MB)"
    )
    assert len(attempts) == TRICKLE_ATTACKERS + LITERAL_ATTACKERS + 4
    assert set(statuses) <= {429, 502, 504}, statuses  # none succeeded, none crashed
    assert statuses.get(429, 0) >= TRICKLE_ATTACKERS - 8  # the gate's default total bound
    assert max(refused) < MAX_PROBE_LATENCY_S  # at once, not after a wait
    assert max(latencies) < MAX_PROBE_LATENCY_S, latencies
    assert peak_rss - baseline_rss < MAX_RSS_GROWTH_MB
