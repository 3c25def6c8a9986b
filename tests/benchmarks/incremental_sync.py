"""Incremental sync cost against folder size: one new message, one flag change, one expunge.

    python tests/benchmarks/incremental_sync.py [--sizes 100,5000,20000] [--rounds 5]

For each size, a private Dovecot Inbox is seeded and synced; then, per round, one message is
appended, one flagged and one expunged, and ``sync_folder`` (what a worker runs on a listener's
event) is timed on an open session, in two ways in the same run:

- ``qresync``: what the pipeline does with a server that offers QRESYNC (Dovecot, Fastmail,
  …): one ``UID FETCH 1:* (…) (CHANGEDSINCE m VANISHED)`` and only the touched placements;
- ``uid-diff``: the same server with QRESYNC hidden from the session, as with a server without
  it: every stored placement read and every UID checked.

Printed as milliseconds per run (median) and as ratios to the smallest folder's ``qresync``
time, the floor of a run that has almost nothing to read (noisy machine: read the ratios).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.crypto import generate_key  # noqa: E402
from pipeline.db import session_scope, sessionmaker_for  # noqa: E402
from pipeline.dev.dovecot import LocalDovecot  # noqa: E402
from pipeline.dev.mailgen import GeneratedMessage  # noqa: E402
from pipeline.dev.ports import free_port  # noqa: E402
from pipeline.dev.seed import seed_maildir  # noqa: E402
from pipeline.grants.service import create_grant, open_grant_session  # noqa: E402
from pipeline.imap import ImapSession  # noqa: E402
from pipeline.models import Folder, Grant  # noqa: E402
from pipeline.sync.run import sync_folder, sync_grant_inline  # noqa: E402
from tests.benchmarks.database import create_database, drop_database  # noqa: E402
from tests.support.grants import plaintext_request  # noqa: E402
from tests.support.mail import append, imap_login, make_message  # noqa: E402


def measure(size: int, rounds: int) -> dict[str, float]:
    """Median milliseconds of one incremental run per mode, on an Inbox of ``size`` messages."""
    work = Path(tempfile.mkdtemp(prefix="ipincr-"))
    work.chmod(0o755)
    now = datetime.now(UTC).replace(microsecond=0)
    dovecot = LocalDovecot(work / "dovecot", free_port())
    dovecot.start()
    dbname = f"ipincr_{uuid.uuid4().hex[:8]}"
    try:
        dovecot.add_user("u", "pw")
        seed_maildir(
            dovecot.maildir("u"),
            (
                GeneratedMessage("INBOX", now - timedelta(minutes=i), (), make_message(f"m{i}"))
                for i in range(size)
            ),
            owner=dovecot.mail_user,
        )
        time.sleep(1.1)  # Dovecot re-reads its passwd-file at most once a second
        url = create_database(dbname)
        settings = Settings(
            database_url=url,
            encryption_keys=generate_key(),  # type: ignore[arg-type]
            data_dir=work / "data",
        )
        request = plaintext_request(dovecot.port, "u", "pw", "u@example.test")
        with session_scope(url) as db:
            grant_id = create_grant(db, settings, request).grant.id
        sessions = sessionmaker_for(url)
        sync_grant_inline(sessions, settings, grant_id)
        with session_scope(url) as db:
            inbox = db.scalars(
                select(Folder.id).where(Folder.grant_id == grant_id, Folder.raw_name == "INBOX")
            ).one()

        def session(qresync: bool) -> ImapSession:
            with session_scope(url) as db:
                grant = db.get(Grant, grant_id)
                assert grant is not None
                imap = open_grant_session(db, settings, grant)
            if not qresync:
                imap.capabilities = imap.capabilities - {"QRESYNC"}
            return imap

        def change(k: int) -> None:
            append(dovecot, "u", "pw", make_message(f"new{k}"))
            conn = imap_login(dovecot, "u", "pw")
            try:
                conn.select("INBOX")
                conn.uid("STORE", str(2 * k + 1), "+FLAGS", "(\\Flagged)")
                conn.uid("STORE", str(2 * k + 2), "+FLAGS", "(\\Deleted)")
                conn.uid("EXPUNGE", str(2 * k + 2))
            finally:
                conn.logout()

        results: dict[str, float] = {}
        k = 0
        for mode, qresync in (("qresync", True), ("uid-diff", False)):
            imap = session(qresync)
            try:
                change(k)
                k += 1
                sync_folder(sessions, settings, imap, grant_id, inbox)  # also ENABLEs: untimed
                times = []
                for _ in range(rounds):
                    change(k)
                    k += 1
                    started = time.perf_counter()
                    sync_folder(sessions, settings, imap, grant_id, inbox)
                    times.append(time.perf_counter() - started)
            finally:
                imap.close()
            results[mode] = 1000 * statistics.median(times)
        return results
    finally:
        dovecot.stop()
        drop_database(dbname)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,5000,20000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    floor: float | None = None
    print(f"{'messages':>9}  {'qresync ms':>10}  {'uid-diff ms':>11}  {'ratios to the floor':>20}")
    for size in sizes:
        got = measure(size, args.rounds)
        floor = floor or got["qresync"]
        print(
            f"{size:>9}  {got['qresync']:>10.0f}  {got['uid-diff']:>11.0f}  "
            f"{got['qresync'] / floor:>8.2f}x {got['uid-diff'] / floor:>8.2f}x"
        )
    print(f"floor: the {sizes[0]}-message Inbox with QRESYNC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
