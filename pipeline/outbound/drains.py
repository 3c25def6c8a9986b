"""What a drain and its steps share: the tally of one drain (:class:`DrainResult`) and what it
needs from the process that runs it (:class:`MailAccess`).

Their own module because both the drain (:mod:`pipeline.outbound.deliver`) and the Sent copy
it files (:mod:`pipeline.outbound.sent_copy`) name them, and the drain imports the Sent copy's
steps: kept in either, the two modules would import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from pipeline.imap import ImapSession
from pipeline.models import Grant


@dataclass
class DrainResult:
    """What one drain did."""

    sent: int = 0
    failed: int = 0
    logins: int = 0
    more: bool = False  # due rows remain (budget or login tokens spent): run another drain
    again_in_s: float | None = None  # a Sent copy failed: a drain should try again this soon
    busy: bool = False  # every slot was taken: another drain has the account


class MailAccess(Protocol):
    """What a drain needs from the process that runs it."""

    def take_login(self, grant: Grant) -> float:
        """Take a login token of the account; seconds to wait when there is none (0: taken)."""

    def imap(self, db: Session, grant: Grant) -> ImapSession:
        """A logged-in IMAP session of the grant (for the Sent copy)."""

    def release_imap(self, grant_id: str, imap: ImapSession, *, healthy: bool) -> None:
        """Give the session back."""

    def after_commit(self) -> None:
        """Webhook rows were committed (message.created of the Sent copy)."""
