"""Every query about grants."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Literal

from sqlalchemy import Connection, Row, Select, bindparam, delete, func, select, text, update
from sqlalchemy.orm import Session

from pipeline.models import Grant
from pipeline.pages import is_uuid


class GrantRepository:
    """Grants table access; never commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, grant_id: str) -> Grant | None:
        """A grant by id (None if absent or not a UUID)."""
        if not is_uuid(grant_id):
            return None
        return self.session.get(Grant, grant_id)

    def get_many(self, grant_ids: Sequence[str]) -> dict[str, Grant]:
        """The grants of ``grant_ids`` that exist, by id (one query)."""
        ids = [g for g in grant_ids if is_uuid(g)]
        if not ids:
            return {}
        return {g.id: g for g in self.session.scalars(select(Grant).where(Grant.id.in_(ids)))}

    def get_by_email(self, email: str) -> Grant | None:
        """A grant by its email address (case-insensitive)."""
        return self.session.scalar(
            select(Grant).where(func.lower(Grant.email) == email.strip().lower())
        )

    def lock_address(self, email: str) -> None:
        """Serialize writers of one address (any case) until the transaction ends."""
        self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext('grant-address:' || lower(:email)))"),
            {"email": email.strip()},
        )

    def find(self, id_or_email: str) -> Grant | None:
        """A grant by id or by email address."""
        if "@" in id_or_email:
            return self.get_by_email(id_or_email)
        return self.get(id_or_email)

    def get_for_update(self, grant_id: str) -> Grant | None:
        """A grant, row-locked until the transaction ends, as the database has it now (an
        instance this session already holds is refreshed)."""
        return self.session.scalar(
            select(Grant)
            .where(Grant.id == grant_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )

    def list(self, *, status: str | None = None) -> Sequence[Grant]:
        """All grants, oldest first."""
        query = select(Grant).order_by(Grant.created_at, Grant.id)
        if status:
            query = query.where(Grant.grant_status == status)
        return self.session.scalars(query).all()

    def add(self, grant: Grant) -> Grant:
        """Stage a new grant."""
        self.session.add(grant)
        self.session.flush()
        return grant

    def set_status(self, grant_id: str, status: str, detail: str | None) -> None:
        """Set the grant's status (valid / invalid) and the reason."""
        self.session.execute(
            update(Grant)
            .where(Grant.id == grant_id)
            .values(grant_status=status, status_detail=detail)
        )

    def set_detail(self, grant_id: str, detail: str | None) -> None:
        """Set the human-readable reason shown with the grant's status, status unchanged."""
        self.session.execute(update(Grant).where(Grant.id == grant_id).values(status_detail=detail))

    def clear_detail(self, grant_id: str, prefix: str) -> None:
        """Clear the grant's reason if it starts with ``prefix`` (a problem that went away)."""
        self.session.execute(
            update(Grant)
            .where(Grant.id == grant_id, Grant.status_detail.startswith(prefix, autoescape=True))
            .values(status_detail=None)
        )

    def set_sync_state(self, grant_id: str, state: str) -> None:
        """Set the grant's overall sync state."""
        self.session.execute(update(Grant).where(Grant.id == grant_id).values(sync_state=state))

    def remove(self, grant_id: str) -> bool:
        """Delete a grant and everything hanging off it (cascades)."""
        result = self.session.execute(delete(Grant).where(Grant.id == grant_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def page(
        self,
        *,
        limit: int,
        offset: int,
        email: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        before: datetime | None = None,
        sort_by: Literal["created_at", "updated_at"] = "created_at",
        descending: bool = True,
    ) -> Sequence[Grant]:
        """Grants sorted by ``sort_by`` (newest first unless not ``descending``, as Nylas
        lists them), ``created_at`` within ``since`` and ``before`` (both inclusive)."""
        query = select(Grant)
        if email:
            query = query.where(func.lower(Grant.email) == email.strip().lower())
        if status:
            query = query.where(Grant.grant_status == status)
        if since is not None:
            query = query.where(Grant.created_at >= since)
        if before is not None:
            query = query.where(Grant.created_at <= before)
        key = Grant.updated_at if sort_by == "updated_at" else Grant.created_at
        order = (key.desc(), Grant.id.desc()) if descending else (key.asc(), Grant.id.asc())
        query = query.order_by(*order).offset(offset).limit(limit)
        return list(self.session.scalars(query))


@cache
def _id_and_status_select(by_email: bool) -> Select[Any]:
    """The id and status of a grant by id or by address, built once (bound per call)."""
    grants = Grant.__table__
    key = func.lower(grants.c.email) if by_email else grants.c.id
    return select(grants.c.id, grants.c.grant_status).where(key == bindparam("key"))


def grant_id_and_status(
    conn: Connection, *, grant_id: str | None = None, email: str | None = None
) -> Row[Any] | None:
    """A grant's ``id`` and ``grant_status`` by id (a UUID) or by address (any case), read
    with one Core statement on a plain connection (no ORM object: the API's lists need only
    the id and whether the grant is live). None: no such grant."""
    if email is not None:
        values = {"key": email.strip().lower()}
        return conn.execute(_id_and_status_select(True), values).first()
    return conn.execute(_id_and_status_select(False), {"key": grant_id}).first()
