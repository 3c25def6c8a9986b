"""The sync tests' account: a grant on the fake IMAP session, the store rolled back."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.support.sync_account import Account, fake_account


@pytest.fixture
def account(pg_sessions: sessionmaker[Session]) -> Account:
    return fake_account(pg_sessions)
