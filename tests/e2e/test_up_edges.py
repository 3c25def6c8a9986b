"""What a newcomer meets around `imap-pipeline up`: taken ports, bad settings, an early Ctrl-C,
role logs that grow live, and how to run the CLI from another terminal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from pipeline.dev.ports import free_port, port_in_use
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

START_TIMEOUT_S = 180  # embedded Postgres (initdb), Redis and every role on a loaded machine
STOP_TIMEOUT_S = 60
TRACEBACK_FREE_LINES = 40  # a stop prints a few lines, never a stack
READER_END_S = 10  # for the output's last lines, once up has exited


@dataclass
class Up:
    """A running `imap-pipeline up` and what it printed so far."""

    process: subprocess.Popen[str]
    data_dir: Path
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None  # takes its output into ``lines``, to the pipe's end

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
        def printed() -> bool:
            assert self.process.poll() is None, f"up exited before {text!r}:\n{self.output()}"
            return any(text in line for line in self.lines)

        wait_for(printed, lambda: f"{text!r}:\n{self.output()[-4000:]}", timeout_s, 0.05)

    def interrupt(self) -> int:
        """Ctrl-C (SIGINT to the terminal's process group), then the exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def up_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAP_PIPELINE_")}
    env.update(
        IMAP_PIPELINE_DATA_DIR=str(data_dir),
        IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT=str(free_port()),
        IMAP_PIPELINE_EMBEDDED_REDIS_PORT=str(free_port()),
        IMAP_PIPELINE_FLOWER_PORT=str(free_port()),
        IMAP_PIPELINE_API_PORT=str(free_port()),
        IMAP_PIPELINE_SYNC_CONCURRENCY="1",
    )
    # the venv's bin folder is not on PATH, as right after `scripts/up` in a new terminal
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)
    env.update(extra)
    return env


def start_up(env: dict[str, str]) -> Up:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = Up(process, Path(env["IMAP_PIPELINE_DATA_DIR"]), env)
    up.reader = threading.Thread(target=lambda: up.lines.extend(process.stdout or []), daemon=True)
    up.reader.start()
    return up


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Up]]:
    ups: list[Up] = []
    yield ups
    for up in ups:
        if up.process.poll() is None:
            up.interrupt()
        if up.process.stdout is not None:
            up.process.stdout.close()


def run_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


def test_a_taken_port_stops_up_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = up_env(tmp_path / "data", IMAP_PIPELINE_API_PORT=str(port))
        result = run_up(env)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"port {port} (the HTTP API) is in use" in output
    assert "set IMAP_PIPELINE_API_PORT to a free port" in output
    assert "Nothing was started" in output
    assert "starting an embedded" not in output
    assert not port_in_use(int(env["IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT"]))
    assert not (tmp_path / "data" / "logs").exists()  # no role ran


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMAP_PIPELINE_UIDVALIDITY_SWEEP_INTERVAL_S", "5"),  # below its minimum
        ("IMAP_PIPELINE_LISTENER_LEASE_TTL_S", "soon"),  # a listener setting
        ("IMAP_PIPELINE_WEBHOOK_MAX_ATTEMPTS", "0"),  # a webhooks setting
    ],
)
def test_an_invalid_setting_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = run_up(up_env(tmp_path / "data", **{variable: value}))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert output.startswith(f"error: invalid setting: {variable}: "), output
    assert len(output.splitlines()) == 1, output
    assert not (tmp_path / "data" / "logs").exists()


def loading_modules(pid: int) -> None:
    """Return once process ``pid`` runs our code and loads the command's modules.

    Before that the interpreter itself is starting (its ``site`` import), where a Ctrl-C is
    Python's own fatal error whatever a program does; that window is milliseconds for a person
    at a terminal, but a loaded test machine stretches it. A compiled module of the command's
    imports mapped into the process marks the moment: our entry point has taken over.
    """
    maps = Path(f"/proc/{pid}/maps")

    def loaded() -> bool:
        try:
            return "pydantic_core" in maps.read_text()
        except OSError:
            return True  # it ended already: the assertions say how

    wait_for(loaded, f"process {pid} to load the command's modules", START_TIMEOUT_S, 0.001)


@pytest.mark.parametrize(
    "moment",
    [
        "",  # as soon as the interpreter runs our code, while the command's modules load
        "starting an embedded Postgres",
        "applying database migrations",
        "imap-pipeline is running",
    ],
)
def test_ctrl_c_at_any_moment_stops_cleanly(tmp_path: Path, started: list[Up], moment: str) -> None:
    up = start_up(up_env(tmp_path / "data"))
    started.append(up)
    if moment:
        up.wait_for_line(moment)
    else:
        loading_modules(up.process.pid)
    code = up.interrupt()
    assert up.reader is not None
    up.reader.join(READER_END_S)  # the reader takes the last lines
    output = up.output()
    assert code in (0, 130, -signal.SIGINT), output
    assert "Traceback" not in output
    assert len(output.splitlines()) < TRACEBACK_FREE_LINES or moment.endswith("running"), output
    assert not (up.data_dir / "runtime.env").exists()
    assert not port_in_use(int(up.env["IMAP_PIPELINE_EMBEDDED_POSTGRES_PORT"]))
    assert not port_in_use(int(up.env["IMAP_PIPELINE_API_PORT"]))


def test_role_logs_grow_while_up_runs_and_the_banner_says_how_to_run_the_cli(
    tmp_path: Path, started: list[Up]
) -> None:
    up = start_up(up_env(tmp_path / "data"))
    started.append(up)
    up.wait_for_line("imap-pipeline is running")
    api_log = up.data_dir / "logs" / "api.log"

    def api_started() -> bool:
        assert up.process.poll() is None, up.output()
        return b"Application startup complete" in api_log.read_bytes()

    wait_for(api_started, "api.log to grow while up runs", START_TIMEOUT_S, interval_s=0.2)
    script = Path(sys.executable).parent / "imap-pipeline"
    # the banner names the exact command, since the venv is not on PATH
    assert f"in another terminal: {script} grants list" in up.output()
    assert f"source {script.parent / 'activate'}" in up.output()


def test_network_settings_up_runs_with_reach_every_role_and_other_terminals(
    tmp_path: Path, started: list[Up]
) -> None:
    from tests.integration.api.api_support import Receiver

    up = start_up(
        up_env(
            tmp_path / "data",
            IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
            IMAP_PIPELINE_WEBHOOK_REQUEST_TIMEOUT_S="7",
        )
    )
    started.append(up)
    up.wait_for_line("imap-pipeline is running")
    runtime = (up.data_dir / "runtime.env").read_text()
    assert "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS='127.0.0.0/8'" in runtime
    assert "IMAP_PIPELINE_WEBHOOK_REQUEST_TIMEOUT_S='7'" in runtime

    # every role runs with them (read from each role process's environment)
    roles = role_environments(up.data_dir)
    assert {"sync", "webhooks", "beat", "listener", "flower", "api"} <= set(roles)
    for role, env in roles.items():
        assert env.get("IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS") == "127.0.0.0/8", role

    # another terminal: only the data folder is set, as after `scripts/up`
    terminal = {k: v for k, v in up.env.items() if not k.startswith("IMAP_PIPELINE_")}
    terminal["IMAP_PIPELINE_DATA_DIR"] = str(up.data_dir)
    receiver = Receiver()
    try:

        def add(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "webhooks", "add", receiver.url,
                 "--triggers", "message.created"],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        added = add(terminal)  # judged with up's allowed networks, as its worker will
        assert added.returncode == 0, added.stdout + added.stderr
        assert "warning" not in added.stdout

        # a terminal that allows more than up's worker does is told so
        wider = {**terminal, "IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,10.0.0.0/8"}
        warned = add(wider)
        assert warned.returncode == 0, warned.stdout + warned.stderr
        assert "warning: this terminal sets IMAP_PIPELINE_WEBHOOK_ALLOWED_NETWORKS" in " ".join(
            warned.stdout.split()
        )
    finally:
        receiver.close()


ROLE_MARKERS = {
    "sync": "sync@",
    "webhooks": "webhooks@",
    "beat": " beat",
    "listener": "listen",
    "flower": " flower",
    "api": " api",
}


def role_environments(data_dir: Path) -> dict[str, dict[str, str]]:
    """The environment of each role process of the `up` using ``data_dir`` (from /proc)."""
    found: dict[str, dict[str, str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            raw_env = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone, or not ours to read
        env = dict(
            item.split("=", 1)
            for item in raw_env.decode(errors="replace").split("\0")
            if "=" in item
        )
        if env.get("IMAP_PIPELINE_DATA_DIR") != str(data_dir) or "pipeline.cli up" in cmdline:
            continue
        for role, marker in ROLE_MARKERS.items():
            if marker in cmdline and ("celery" in cmdline or "imap-pipeline" in cmdline):
                found.setdefault(role, env)
    return found


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports nothing listens on (probably, as free_port)."""
    from pipeline.dev.ports import can_bind

    while True:
        base = free_port()
        if base + count < 65536 and all(can_bind(base + i) for i in range(count)):
            return base


def test_up_gives_every_role_a_metrics_port_of_its_own(tmp_path: Path, started: list[Up]) -> None:
    import httpx

    base = consecutive_free_ports(5)  # sync, webhooks, beat, listener, api (Flower: its own)
    up = start_up(up_env(tmp_path / "data", IMAP_PIPELINE_METRICS_PORT=str(base)))
    started.append(up)
    up.wait_for_line("imap-pipeline is running")
    names = ["sync", "webhooks", "beat", "listener", "api"]
    ports = dict(zip(names, range(base, base + 5), strict=True))
    answers: list[httpx.Response] = []

    def served(port: int) -> bool:
        assert up.process.poll() is None, up.output()
        try:
            answers.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5))
        except httpx.HTTPError:
            return False
        return True

    for role, port in ports.items():
        wait_for(partial(served, port), f"{role}'s metrics on {port}", START_TIMEOUT_S, 0.3)
        response = answers[-1]
        assert response.status_code == 200, role
        if role == "beat":
            assert "imap_pipeline_queue_depth" in response.text
    # each role has its own multiprocess folder in the data dir
    assert {p.name for p in (up.data_dir / "metrics").iterdir()} >= set(ports)


def test_a_taken_metrics_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_up(up_env(tmp_path / "data", IMAP_PIPELINE_METRICS_PORT=str(port - 2)))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"port {port} (beat's metrics) is in use" in output
    assert "IMAP_PIPELINE_METRICS_PORT" in output
