"""The shared limits sit below the IMAP sessions and the listener that use them, never beside."""

from __future__ import annotations

import subprocess
import sys


def _loaded_by(module: str) -> set[str]:
    """The pipeline and workers modules importing ``module`` loads, in a fresh interpreter."""
    program = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('pipeline', 'workers'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_limits_import_neither_the_listener_nor_the_imap_layer() -> None:
    loaded = _loaded_by("pipeline.limits")
    above = sorted(m for m in loaded if m.startswith(("pipeline.listener", "pipeline.imap")))
    assert above == [], f"pipeline.limits pulls in {above}"
    assert "pipeline.redis" in loaded  # keys and clients come from the one place


def test_the_connection_manager_does_not_import_the_listener() -> None:
    loaded = _loaded_by("pipeline.imap.connections")
    assert not any(m.startswith("pipeline.listener") for m in loaded)
    assert "pipeline.limits.slots" in loaded
