"""Every Redis key is named in pipeline/redis.py, and the names do not change under a deployment."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from pipeline import redis as keys

ROOT = Path(__file__).resolve().parents[2]
KEY_SPELLING = re.compile(r"imap-pipeline:\S")  # "imap-pipeline: the ..." in prose is no key


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of a module, docstrings left out (they may name the keys they describe)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
        # an attribute docstring: a string expression statement right after an assignment
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if not isinstance(statements, list):
                continue
            for before, after in itertools.pairwise(statements):
                if (
                    isinstance(before, ast.Assign | ast.AnnAssign)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                ):
                    docstrings.add(id(after.value))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_module_but_pipeline_redis_spells_a_key() -> None:
    sources = [
        *sorted((ROOT / "pipeline").rglob("*.py")),
        *sorted((ROOT / "workers").rglob("*.py")),
        ROOT / "beat_schedule.py",
    ]
    own = ROOT / "pipeline" / "redis.py"
    spelled = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in sources
        if path != own
        for node in _code_strings(ast.parse(path.read_text(), str(path)))
        if KEY_SPELLING.search(node.value)
    ]
    assert spelled == [], "build these keys with pipeline.redis:\n" + "\n".join(spelled)


@pytest.mark.parametrize(
    ("key", "name"),
    [
        (keys.LISTENERS_KEY, "imap-pipeline:listeners"),
        (keys.lease_key("g"), "imap-pipeline:lease:g"),
        (keys.listener_status_key("g"), "imap-pipeline:listener:status:g"),
        (keys.conn_key("g"), "imap-pipeline:conn:g"),
        (keys.want_key("g", 1), "imap-pipeline:conn:g:want:1"),
        (keys.bucket_key("login:a:g"), "imap-pipeline:rl:login:a:g"),
        (keys.account_backoff_key("g"), "imap-pipeline:backoff:a:g"),
        (keys.provider_backoff_key("yahoo"), "imap-pipeline:backoff:p:yahoo"),
        (keys.backoff_streak_key("g"), "imap-pipeline:backoff:n:g"),
        (keys.throttles_key("yahoo"), "imap-pipeline:throttles:yahoo"),
        (keys.limits_key("gmail"), "imap-pipeline:limits:gmail"),
        (keys.smtp_slot_key("g", 0), "imap-pipeline:smtp-slot:g:0"),
        (keys.folder_lock_key("f"), "imap-pipeline:lock:folder:f"),
        (keys.folder_lock_key("f", (1, 50)), "imap-pipeline:lock:folder:f:1-50"),
        (keys.folder_dirty_key("f"), "imap-pipeline:dirty:folder:f"),
        (keys.folder_retry_key("f"), "imap-pipeline:retry:folder:f"),
        (keys.folder_retry_key("f", (1, 50)), "imap-pipeline:retry:folder:f:1-50"),
        (keys.range_done_key("f", (1, 50)), "imap-pipeline:done:folder:f:1-50"),
        (keys.pending_ranges_key("g"), "imap-pipeline:ranges:g"),
        (keys.folders_waiting_key("g"), "imap-pipeline:folders-waiting:g"),
        (keys.BEAT_KEY_PREFIX, "imap-pipeline:redbeat:"),
        (keys.BEAT_LOCK_KEY, "imap-pipeline:redbeat:lock"),
        (keys.job_key("purge"), "imap-pipeline:job:purge"),
        (keys.folders_discovered_key("g"), "imap-pipeline:folders-discovered:g"),
        (keys.uidvalidity_looked_key("g"), "imap-pipeline:uidvalidity-looked:g"),
        (keys.WEBHOOK_KICK_KEY, "imap-pipeline:webhooks:dispatch-queued"),
        (keys.webhook_deliver_queued_key("d"), "imap-pipeline:webhooks:deliver-queued:d"),
        (keys.webhook_deliver_at_key("d"), "imap-pipeline:webhooks:deliver-at:d"),
    ],
)
def test_key_names_survive_an_upgrade(key: str, name: str) -> None:
    """A running deployment's leases, back-offs and locks stay where the new release looks."""
    assert key == name
