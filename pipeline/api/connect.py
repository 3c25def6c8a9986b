"""Connecting accounts: ``POST /v3/connect/custom`` and the IMAP connector (``/v3/connectors``).

A custom connection logs in to the IMAP server for real before anything is stored (taking a login
token of the account and provider first, :func:`pipeline.grants.interactive.login_turn`), on the
sign-in gate's own threads (:mod:`pipeline.grants.signin`); a wrong password stores nothing. The
same address with the same server and username again re-authenticates the existing grant;
with another server or username it is a 409 and changes nothing (the takeover rule,
:mod:`pipeline.grants.service`). After the commit the grant's initial sync is enqueued; if the
broker is down the grant stays and the reconciliation task syncs it later.

IMAP needs no provider app, so the connectors ``imap``, ``icloud`` and ``yahoo`` (both signed in
over IMAP with an app password, with the engine's preset) always exist: creating one is accepted
(and changes nothing) for code written against Nylas.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from pipeline.api.deps import api_state, ok, page
from pipeline.api.errors import invalid_request, not_found
from pipeline.api.gate import client_of
from pipeline.api.grants import grant_view
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.signin import sign_in
from pipeline.presets import TlsMode

router = APIRouter(tags=["connect"])


class ImapSettings(BaseModel):
    """The ``settings`` of a custom connection. Unset host/port come from the presets.

    ``provider: "imap"`` takes ``imap_username``/``imap_password``; Nylas' ``icloud`` takes
    ``username``/``password`` (an app-specific password) and ``yahoo`` an address and an app
    password; both are signed in with the engine's preset of that provider.
    """

    model_config = ConfigDict(extra="forbid")

    imap_username: str | None = Field(default=None, min_length=1, max_length=320)
    imap_password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    username: str | None = Field(default=None, min_length=1, max_length=320)
    password: SecretStr | None = Field(default=None, min_length=1, max_length=1024)
    refresh_token: SecretStr | None = Field(
        default=None, max_length=4096, description="Yahoo OAuth: not supported (400)."
    )
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

    provider: Literal["imap", "icloud", "yahoo"]
    settings: ImapSettings
    state: str | None = Field(default=None, max_length=1024)
    scope: list[str] | None = None


class ConnectorRequest(BaseModel):
    """Body of ``POST /v3/connectors``."""

    model_config = ConfigDict(extra="allow")

    provider: str = Field(max_length=32)


def _grant_request(provider: str, s: ImapSettings) -> GrantRequest:
    if s.refresh_token is not None:
        raise invalid_request(
            "OAuth refresh tokens are not supported: this server signs in over IMAP with a "
            "password. Connect with an app password instead (Yahoo: settings.email and "
            "settings.password)."
        )
    password = s.imap_password or s.password
    if password is None:
        raise invalid_request(
            "settings.imap_password is required (settings.password for icloud and yahoo: the "
            "account's app password)."
        )
    email = s.email or s.email_address
    username = s.imap_username or s.username or email
    if username is None:
        raise invalid_request(
            "settings.imap_username is required (settings.username or settings.email for "
            "icloud and yahoo)."
        )
    email = email or (username if "@" in username else None)
    if not email:
        raise invalid_request(
            "settings.imap_username is not an email address: add settings.email with the "
            "account's address."
        )
    try:
        return GrantRequest(
            email=email,
            password=password,
            provider=s.type if provider == "imap" else provider,
            imap_username=username,
            imap_host=s.imap_host,
            imap_port=s.imap_port,
            imap_tls=s.imap_tls,
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

    Runs behind the sign-in gate (:mod:`pipeline.grants.signin`): 429 at once when too many
    sign-ins are in flight, 504 when the server does not finish within the deadline.
    """
    api = api_state(request)
    grant_request = _grant_request(body.provider, body.settings)
    done = await api.sign_ins.run(client_of(request), lambda: sign_in(api, grant_request))
    if not done.created:
        response.status_code = status.HTTP_200_OK
    view = grant_view(done.grant)
    if body.state is not None:
        view["state"] = body.state
    return ok(request, view)


CONNECTOR_PROVIDERS = ("imap", "icloud", "yahoo")  # all IMAP here; icloud/yahoo use presets


def _connector(provider: str) -> dict[str, Any]:
    return {"provider": provider, "settings": {}, "scope": []}


@router.post("/connectors", summary="Create a connector (imap, icloud, yahoo)")
def create_connector(request: Request, body: ConnectorRequest) -> dict[str, Any]:
    """Accept the ``imap``, ``icloud`` and ``yahoo`` connectors (they always exist: each needs no
    provider app over IMAP); other providers are not served here."""
    provider = body.provider.lower()
    if provider not in CONNECTOR_PROVIDERS:
        raise invalid_request(
            f"Provider {body.provider!r} is not supported: this server connects IMAP accounts "
            "only (provider 'imap', or 'icloud' and 'yahoo' with an app password)."
        )
    return ok(request, _connector(provider))


@router.get("/connectors", summary="List connectors")
def list_connectors(request: Request) -> dict[str, Any]:
    """The connectors, ``imap``, ``icloud`` and ``yahoo``."""
    return page(request, [_connector(p) for p in CONNECTOR_PROVIDERS], None)


@router.get("/connectors/{provider}", summary="Get a connector")
def get_connector(
    request: Request, provider: Annotated[str, Path(max_length=32)]
) -> dict[str, Any]:
    """The ``imap``, ``icloud`` or ``yahoo`` connector; any other provider is not found."""
    if provider.lower() not in CONNECTOR_PROVIDERS:
        raise not_found(
            f"No connector {provider!r}; the connectors are {', '.join(CONNECTOR_PROVIDERS)}."
        )
    return ok(request, _connector(provider.lower()))
