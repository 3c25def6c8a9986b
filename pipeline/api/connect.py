"""Connecting accounts: ``POST /v3/connect/custom`` and the IMAP connector (``/v3/connectors``).

A custom connection logs in to the IMAP server for real before anything is stored (taking a login
token of the account and provider first, :func:`pipeline.api.limits.login_turn`), on the
sign-in gate's own threads (:mod:`pipeline.api.signin`); a wrong password stores nothing. The
same address with the same server and username again re-authenticates the existing grant;
with another server or username it is a 409 and changes nothing (the takeover rule,
:mod:`pipeline.grants.service`). After the commit the grant's initial sync is enqueued; if the
broker is down the grant stays and the reconciliation task syncs it later.

IMAP needs no provider app, so the only connector is ``imap`` and it always exists: creating it
is accepted (and changes nothing) for code written against Nylas.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from pipeline.api.deps import api_state, ok, page
from pipeline.api.errors import invalid_request, not_found
from pipeline.api.gate import client_of
from pipeline.api.grants import grant_view
from pipeline.api.signin import sign_in
from pipeline.grants.schemas import GrantRequest
from pipeline.presets import TlsMode

router = APIRouter(tags=["connect"])


class ImapSettings(BaseModel):
    """The ``settings`` of an IMAP custom connection. Unset host/port come from the presets."""

    model_config = ConfigDict(extra="forbid")

    imap_username: str = Field(min_length=1, max_length=320)
    imap_password: SecretStr = Field(min_length=1, max_length=1024)
    imap_host: str | None = Field(default=None, max_length=255)
    imap_port: int | None = Field(default=None, ge=1, le=65535)
    imap_tls: TlsMode | None = None
    smtp_host: str | None = Field(default=None, max_length=255)
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_tls: TlsMode | None = None
    smtp_username: str | None = Field(default=None, max_length=320)
    smtp_password: SecretStr | None = Field(default=None, max_length=1024)
    email: str | None = Field(
        default=None,
        max_length=320,
        description="The account's address when imap_username is not one.",
    )
    email_address: str | None = Field(default=None, max_length=320)
    type: str | None = Field(
        default=None, max_length=32, description="Provider preset (yahoo, icloud, ...)."
    )


class CustomAuthRequest(BaseModel):
    """Body of ``POST /v3/connect/custom``."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["imap"]
    settings: ImapSettings
    state: str | None = Field(default=None, max_length=1024)
    scope: list[str] | None = None


class ConnectorRequest(BaseModel):
    """Body of ``POST /v3/connectors``."""

    model_config = ConfigDict(extra="allow")

    provider: str = Field(max_length=32)


def _grant_request(s: ImapSettings) -> GrantRequest:
    email = s.email or s.email_address or (s.imap_username if "@" in s.imap_username else None)
    if not email:
        raise invalid_request(
            "settings.imap_username is not an email address: add settings.email with the "
            "account's address."
        )
    try:
        return GrantRequest(
            email=email,
            password=s.imap_password,
            provider=s.type,
            imap_host=s.imap_host,
            imap_port=s.imap_port,
            imap_tls=s.imap_tls,
            imap_username=s.imap_username,
            smtp_host=s.smtp_host,
            smtp_port=s.smtp_port,
            smtp_tls=s.smtp_tls,
            smtp_username=s.smtp_username,
            smtp_password=s.smtp_password,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise invalid_request(f"Invalid settings.{where}: {first['msg']}.") from exc


@router.post(
    "/connect/custom",
    status_code=status.HTTP_201_CREATED,
    summary="Connect an IMAP account (custom authentication)",
)
async def custom_auth(
    request: Request, response: Response, body: CustomAuthRequest
) -> dict[str, Any]:
    """Log in to the IMAP server, store the grant, enqueue its initial sync.

    Runs behind the sign-in gate (:mod:`pipeline.api.signin`): 429 at once when too many
    sign-ins are in flight, 504 when the server does not finish within the deadline.
    """
    api = api_state(request)
    grant_request = _grant_request(body.settings)
    done = await api.sign_ins.run(client_of(request), lambda: sign_in(api, grant_request))
    if not done.created:
        response.status_code = status.HTTP_200_OK
    view = grant_view(done.grant)
    if body.state is not None:
        view["state"] = body.state
    return ok(request, view)


IMAP_CONNECTOR: dict[str, Any] = {"provider": "imap", "settings": {}, "scope": []}


@router.post("/connectors", summary="Create the IMAP connector")
def create_connector(request: Request, body: ConnectorRequest) -> dict[str, Any]:
    """Accept the ``imap`` connector (it always exists); other providers are not served here."""
    if body.provider.lower() != "imap":
        raise invalid_request(
            f"Provider {body.provider!r} is not supported: this server connects IMAP accounts "
            "only (provider 'imap')."
        )
    return ok(request, IMAP_CONNECTOR)


@router.get("/connectors", summary="List connectors")
def list_connectors(request: Request) -> dict[str, Any]:
    """The one connector, ``imap``."""
    return page(request, [IMAP_CONNECTOR], None)


@router.get("/connectors/{provider}", summary="Get a connector")
def get_connector(
    request: Request, provider: Annotated[str, Path(max_length=32)]
) -> dict[str, Any]:
    """The ``imap`` connector; any other provider is not found."""
    if provider.lower() != "imap":
        raise not_found(f"No connector {provider!r}; the only connector is 'imap'.")
    return ok(request, IMAP_CONNECTOR)
