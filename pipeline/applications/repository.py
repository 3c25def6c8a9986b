"""Every query of the application's own records: its redirect URIs and the authorization codes
of hosted auth (:mod:`pipeline.applications.tables`); nothing here commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from pipeline.applications.tables import auth_codes, redirect_uris
from pipeline.pages import is_uuid


class ApplicationRepository:
    """Redirect URIs and authorization codes, read and written in the caller's transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def redirect_uris(self) -> list[dict[str, Any]]:
        """Registered redirect URIs, oldest first."""
        rows = self.session.execute(
            select(redirect_uris).order_by(redirect_uris.c.created_at, redirect_uris.c.id)
        ).mappings()
        return [dict(r) for r in rows]

    def add_redirect_uri(self, url: str, platform: str) -> dict[str, Any]:
        """Register a redirect URI (the existing row when it is registered already)."""
        stmt = (
            pg_insert(redirect_uris)
            .values(id=str(uuid.uuid4()), url=url, platform=platform, created_at=func.now())
            .on_conflict_do_nothing(constraint="uq_api_redirect_uris_url")
        )
        self.session.execute(stmt)
        row = (
            self.session.execute(select(redirect_uris).where(redirect_uris.c.url == url))
            .mappings()
            .one()
        )
        return dict(row)

    def redirect_uri(self, redirect_uri_id: str) -> dict[str, Any] | None:
        """One registered redirect URI by id."""
        if not is_uuid(redirect_uri_id):
            return None
        row = (
            self.session.execute(select(redirect_uris).where(redirect_uris.c.id == redirect_uri_id))
            .mappings()
            .one_or_none()
        )
        return dict(row) if row is not None else None

    def delete_redirect_uri(self, redirect_uri_id: str) -> bool:
        """Unregister a redirect URI; False when there was none."""
        if not is_uuid(redirect_uri_id):
            return False
        result = self.session.execute(
            delete(redirect_uris).where(redirect_uris.c.id == redirect_uri_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def redirect_uri_registered(self, url: str) -> bool:
        """Whether ``url`` is registered exactly."""
        return bool(self.session.scalar(select(exists().where(redirect_uris.c.url == url))))

    def add_auth_code(
        self,
        *,
        code_hash: str,
        grant_id: str,
        client_id: str,
        redirect_uri: str,
        code_challenge: str | None,
        expires_at: datetime,
    ) -> None:
        """Store a new authorization code (by its hash)."""
        self.session.execute(
            auth_codes.insert().values(
                code_hash=code_hash,
                grant_id=grant_id,
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_challenge=code_challenge,
                expires_at=expires_at,
            )
        )

    def redeem_auth_code(self, code_hash: str) -> dict[str, Any] | None:
        """Use a code once: the row if it was unused and unexpired (now marked used), else
        None."""
        row = (
            self.session.execute(
                update(auth_codes)
                .where(
                    auth_codes.c.code_hash == code_hash,
                    auth_codes.c.used_at.is_(None),
                    auth_codes.c.expires_at > func.now(),
                )
                .values(used_at=func.now())
                .returning(auth_codes)
            )
            .mappings()
            .one_or_none()
        )
        return dict(row) if row is not None else None

    def purge_auth_codes(self) -> None:
        """Forget expired codes (called as new ones are made; the table stays small)."""
        self.session.execute(delete(auth_codes).where(auth_codes.c.expires_at < func.now()))
