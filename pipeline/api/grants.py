"""Grants: ``GET /v3/grants``, ``GET|PATCH|DELETE /v3/grants/{grant_id}``.

``{grant_id}`` is the grant's id or its email address. PATCH changes connection settings or
credentials and logs in with the result before anything is stored, like ``/connect/custom``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import (
    ApiState,
    Db,
    PathGrant,
    State,
    api_state,
    notify_after_commit,
    ok,
    path_grant,
)
from pipeline.api.errors import invalid_request, request_id_of
from pipeline.api.filters import Timestamp, from_unix
from pipeline.api.gate import client_of
from pipeline.config import Settings
from pipeline.grants.repository import GrantRepository
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.service import grant_secrets, remove_grant
from pipeline.grants.signin import reconnect
from pipeline.grants.views import grant_dict
from pipeline.models import Grant
from pipeline.presets import TlsMode

log = logging.getLogger(__name__)

router = APIRouter(tags=["grants"])

DEFAULT_GRANTS_LIMIT = 10  # Nylas v3 default for GET /v3/grants
MAX_GRANTS_LIMIT = 200


def grant_view(grant: Grant) -> dict[str, Any]:
    """A grant in the Nylas v3 shape (never any secret)."""
    view = grant_dict(grant)
    view.setdefault("account_id", None)
    view.setdefault("provider_user_id", grant.imap_username)
    return view


class GrantSettingsUpdate(BaseModel):
    """Settings a PATCH may change; unset fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    imap_username: str | None = Field(default=None, max_length=320)
    imap_password: SecretStr | None = None
    imap_host: str | None = Field(default=None, max_length=255)
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_tls: TlsMode | None = None
    smtp_username: str | None = Field(default=None, max_length=320)
    smtp_password: SecretStr | None = None
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_tls: TlsMode | None = None


class GrantUpdate(BaseModel):
    """Body of ``PATCH /v3/grants/{grant_id}``."""

    model_config = ConfigDict(extra="forbid")

    settings: GrantSettingsUpdate | None = None
    scope: list[str] | None = None  # accepted for SDK compatibility; IMAP has no scopes


@router.get("/grants", summary="List grants")
def list_grants(
    request: Request,
    db: Db,
    limit: Annotated[int, Query(ge=1, le=MAX_GRANTS_LIMIT)] = DEFAULT_GRANTS_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
    email: Annotated[str | None, Query(max_length=320)] = None,
    grant_status: Annotated[str | None, Query(max_length=16)] = None,
    sort_by: Literal["created_at", "updated_at"] = "created_at",
    order_by: Literal["asc", "desc"] = "desc",
    since: Timestamp = None,
    before: Timestamp = None,
    provider: Annotated[str | None, Query(max_length=32)] = None,
    ip: Annotated[str | None, Query(max_length=64)] = None,
    account_id: Annotated[str | None, Query(max_length=256)] = None,
    account_ids: Annotated[str | None, Query(max_length=4000)] = None,
    workspace_id: Annotated[str | None, Query(max_length=256)] = None,
) -> dict[str, Any]:
    """Grants as Nylas v3 lists them: newest first by ``created_at`` unless ``sort_by`` /
    ``order_by`` say otherwise, paged by ``limit`` and ``offset``. Every filter filters:
    ``provider`` is ``imap`` for every grant here, and no grant has an ``ip``, a v2
    ``account_id`` or a ``workspace_id``, so naming one matches none."""
    unmatched = (ip, account_id, account_ids, workspace_id)
    if any(v is not None for v in unmatched) or provider not in (None, "imap"):
        rows: Sequence[Grant] = []
    else:
        rows = GrantRepository(db).page(
            limit=limit,
            offset=offset,
            email=email,
            status=grant_status,
            since=from_unix(since),
            before=from_unix(before),
            sort_by=sort_by,
            descending=order_by == "desc",
        )
    return {
        "request_id": request_id_of(request),
        "data": [grant_view(g) for g in rows],
        "limit": limit,
        "offset": offset,
        "next_cursor": None,
    }


@router.get("/grants/{grant_id}", summary="Get a grant")
def get_grant(request: Request, grant: PathGrant) -> dict[str, Any]:
    """One grant, by id or email address."""
    return ok(request, grant_view(grant))


def merged_request(grant: Grant, new: GrantSettingsUpdate, settings: Settings) -> GrantRequest:
    """The sign-in a PATCH makes: the grant's settings and credentials with ``new`` over them.

    Raises:
        ApiError: 400 when the merged settings are not valid.
    """
    secrets = grant_secrets(grant, settings)
    port_changed = new.imap_port is not None and new.imap_port != grant.imap_port
    imap_tls: TlsMode | None = new.imap_tls or (
        None if port_changed else grant.imap_tls  # type: ignore[assignment]
    )
    smtp_port_changed = new.smtp_port is not None and new.smtp_port != grant.smtp_port
    # a new port without a mode is probed at the login (pipeline.grants.tlsprobe)
    smtp_tls: TlsMode | None = new.smtp_tls or (
        None if smtp_port_changed else grant.smtp_tls  # type: ignore[assignment]
    )
    smtp_password = new.smtp_password or (
        SecretStr(secrets["smtp_password"]) if "smtp_password" in secrets else None
    )
    try:
        return GrantRequest(
            email=grant.email,
            password=new.imap_password or SecretStr(secrets["imap_password"]),
            provider=grant.provider,
            imap_host=new.imap_host or grant.imap_host,
            imap_port=new.imap_port or grant.imap_port,
            imap_tls=imap_tls,
            imap_username=new.imap_username or grant.imap_username,
            # plaintext only where the grant already had it (an operator's opt-in)
            allow_plaintext=(imap_tls != "plain" or grant.imap_tls == "plain")
            and (smtp_tls != "plain" or grant.smtp_tls == "plain"),
            verify_tls=grant.verify_tls,
            smtp_host=new.smtp_host or grant.smtp_host,
            smtp_port=new.smtp_port or grant.smtp_port,
            smtp_tls=smtp_tls,
            smtp_username=new.smtp_username or grant.smtp_username,
            smtp_password=smtp_password,
        )
    except ValidationError as exc:
        raise invalid_request(f"Invalid settings: {exc.errors()[0]['msg']}.") from exc


def _find_grant(api: ApiState, locator: str) -> Grant:
    with api.sessions() as db:
        return path_grant(db, locator)


@router.patch("/grants/{grant_id}", summary="Update a grant's settings or credentials")
async def update_grant(
    request: Request,
    grant_id: Annotated[str, Path(description="The grant's id, or its email address.")],
    body: GrantUpdate,
) -> dict[str, Any]:
    """Change settings; a real login with the merged settings must succeed first.

    The login is a sign-in to a server the caller names: it runs behind the sign-in gate like
    ``/v3/connect/custom`` (:mod:`pipeline.grants.signin`): 429 at once when too many are in
    flight, 504 past the sign-in deadline, no database connection held meanwhile.
    """
    api = api_state(request)
    new = body.settings
    if new is None or not new.model_fields_set:
        return ok(request, grant_view(await run_in_threadpool(_find_grant, api, grant_id)))
    updated = await api.sign_ins.run(
        client_of(request),
        lambda: reconnect(
            api,
            lambda db: path_grant(db, grant_id),
            lambda g: merged_request(g, new, api.settings),
        ),
    )
    return ok(request, grant_view(updated))


@router.delete("/grants/{grant_id}", summary="Delete a grant and all its data")
def delete_grant(request: Request, grant: PathGrant, db: Db, api: State) -> dict[str, Any]:
    """Remove the grant with its folders, messages and threads (the listeners let go of it)."""
    remove_grant(db, grant)  # emits grant.deleted
    db.commit()
    notify_after_commit(api)
    api.imap_pool.forget(grant.id)
    log.info("grant deleted", extra={"grant_id": grant.id})
    return {"request_id": request_id_of(request)}
