"""The package as the image installs it (``pip install .``, not editable): what the containers
run works without the source tree (migrations, the API with its offline docs, the probes)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.config import Settings
from pipeline.dev.ports import free_port
from tests.support.processes import pipeline_env
from tests.support.waiting import wait_for

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 300  # a wheel build with its own build environment
RUN_TIMEOUT_S = 120
API_START_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project installed into a folder of its own (its dependencies come from the venv)."""
    target = tmp_path_factory.mktemp("installed")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    return target


def installed_env(settings: Settings, target: Path, **extra: str) -> dict[str, str]:
    env = pipeline_env(settings, **extra)
    env["PYTHONPATH"] = str(target)  # ahead of the venv; the checkout is not on the path
    return env


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def api(settings: Settings, installed: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = installed_env(settings, installed, IMAP_PIPELINE_API_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "api"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, "the installed API exited"
        try:
            httpx.get(f"{url}/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    try:
        wait_for(answers, "the installed API to answer", API_START_TIMEOUT_S, interval_s=0.2)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_the_installed_package_is_what_runs(
    settings: Settings, installed: Path, tmp_path: Path
) -> None:
    env = installed_env(settings, installed)
    where = run(env, tmp_path, "-c", "import pipeline, workers; print(pipeline.__file__)")
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr
    migrated = run(env, tmp_path, "-m", "pipeline.cli", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "database is up to date" in migrated.stdout


def test_the_installed_api_serves_probes_and_offline_docs(api: str) -> None:
    with httpx.Client(base_url=api, timeout=10) as http:
        assert http.get("/readyz").status_code == 200
        page = http.get("/docs")
        assert page.status_code == 200
        bundle = http.get("/docs/assets/swagger-ui-bundle.js")
        assert bundle.status_code == 200
        assert len(bundle.content) > 100_000  # Swagger UI itself, shipped with the package
