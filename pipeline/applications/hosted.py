"""Hosted sign-in, without its page: the signed state the sign-in form carries from the GET
to the POST, the sign-in it runs, and where it sends the user back (the HTML and the HTTP
answers are :mod:`pipeline.api.hosted`'s).

A public page lets anyone sign in, so the form's state is trusted only as far as it is
signed::

    begin ── another client_id, an unregistered redirect URI, an unsupported parameter? ──>
       │     InvalidRequest (nothing redirected)
       v
    Flow (client_id, redirect_uri, state, PKCE challenge, provider, expiry)
       ── sign: HMAC-SHA256 under a key of its own ──> the form's hidden field
    the POST ── accepted: the MAC matches (compared in constant time), the flow has not
       │        expired, it names this application's client_id and a redirect URI still
       │        registered? ── no ──> None (the page says: start again)
       v
    connect: the sign-in (:func:`pipeline.grants.signin.sign_in`: the takeover rule, the
    login) and, in its storing transaction, a single-use code bound to the flow's client,
    redirect URI and PKCE challenge ──> redirect_to(flow, code)

The form key is derived from the first encryption key: rotating that key voids open forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr, ValidationError
from sqlalchemy.orm import Session

from pipeline.applications import clients, codes
from pipeline.applications.repository import ApplicationRepository
from pipeline.errors import ConfigurationError, InvalidRequest
from pipeline.grants.schemas import GrantRequest
from pipeline.grants.signin import SignInAccess, sign_in
from pipeline.models import Grant

FORM_TTL_S = 30 * 60  # a sign-in form may be submitted up to 30 minutes after it was served
HOSTED_PROVIDERS = ("imap", "icloud", "yahoo")  # Nylas' providers that sign in over IMAP


class Flow(BaseModel):
    """What the sign-in form carries from the GET to the POST (signed)."""

    client_id: str
    redirect_uri: str
    state: str = ""
    code_challenge: str = ""
    expires: int = 0
    provider: str = "imap"  # or icloud / yahoo: signed in with that preset


def form_key(encryption_key: str) -> bytes:
    """The forms' MAC key: a key of its own, derived from the first encryption key."""
    return hashlib.sha256(b"hosted-auth-form|" + encryption_key.encode()).digest()


def sign(key: bytes, flow: Flow) -> str:
    """The flow as the form's hidden field: its JSON (base64url) and its HMAC."""
    payload = flow.model_dump_json().encode()
    mac = hmac.new(key, payload, hashlib.sha256).hexdigest()
    return base64.urlsafe_b64encode(payload).decode() + "." + mac


def verify(key: bytes, token: str) -> Flow | None:
    """The flow of a form field :func:`sign` made with ``key`` and not expired (None: not
    one, altered, or expired)."""
    try:
        encoded, mac = token.rsplit(".", 1)
        payload = base64.urlsafe_b64decode(encoded.encode())
    except (ValueError, TypeError):
        return None
    expected = hmac.new(key, payload, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        flow = Flow.model_validate_json(payload)
    except ValidationError:
        return None
    return flow if flow.expires >= time.time() else None


def begin(
    db: Session,
    application_id: str,
    *,
    client_id: str,
    redirect_uri: str,
    response_type: str,
    provider: str,
    state: str,
    code_challenge: str,
    code_challenge_method: str,
) -> Flow:
    """The flow of a sign-in page asked for, for the application's client_id and a redirect
    URI registered for it; it expires after ``FORM_TTL_S``.

    Raises:
        InvalidRequest: Another client_id, an unregistered redirect URI, or an unsupported
            parameter.
    """
    clients.check_client(db, application_id, client_id, redirect_uri)
    if response_type != "code":
        raise InvalidRequest("Only response_type=code is supported.")
    if provider not in HOSTED_PROVIDERS:
        raise InvalidRequest(
            "This server connects IMAP accounts only: provider=imap, or icloud and yahoo "
            "(signed in over IMAP with an app password)."
        )
    if code_challenge and code_challenge_method.lower() not in ("s256",):
        raise InvalidRequest("Only code_challenge_method=S256 is supported.")
    return Flow(
        client_id=client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=code_challenge,
        expires=int(time.time()) + FORM_TTL_S,
        provider=provider,
    )


def accepted(db: Session, key: bytes, application_id: str, token: str) -> Flow | None:
    """The flow of a submitted form if it may still sign in: signed with ``key``, not
    expired, for the application's client_id and a redirect URI still registered (None:
    start again)."""
    flow = verify(key, token)
    registered = flow is not None and ApplicationRepository(db).redirect_uri_registered(
        flow.redirect_uri
    )
    if flow is None or flow.client_id != application_id or not registered:
        return None
    return flow


def redirect_to(flow: Flow, code: str) -> str:
    """The flow's redirect URI with the code (and the client's state) added to its query."""
    parts = urlsplit(flow.redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("code", code))
    if flow.state:
        query.append(("state", flow.state))
    return urlunsplit(parts._replace(query=urlencode(query)))


def grant_request(values: dict[str, str], password: str, provider: str = "imap") -> GrantRequest:
    """What the form says, as a grant request (``provider`` icloud or yahoo: that preset).

    Raises:
        ConfigurationError: The address or a port number is malformed.
    """
    try:
        request = GrantRequest(
            email=values.get("email", ""),
            password=SecretStr(password),
            provider=provider if provider != "imap" else None,
            imap_username=values.get("imap_username") or None,
            imap_host=values.get("imap_host") or None,
            imap_port=int(values["imap_port"]) if values.get("imap_port") else None,
            smtp_host=values.get("smtp_host") or None,
            smtp_port=int(values["smtp_port"]) if values.get("smtp_port") else None,
        )
    except (ValidationError, ValueError) as exc:
        raise ConfigurationError(
            "Check the address and the port numbers (whole numbers from 1 to 65535)."
        ) from exc
    return request


def connect(access: SignInAccess, flow: Flow, request: GrantRequest) -> str:
    """Log in, store the grant and a code bound to the flow; returns the code (raises on a
    refused login, as :func:`pipeline.grants.signin.sign_in`). Runs on a sign-in thread."""

    def add_code(db: Session, grant: Grant) -> str:
        return codes.issue(
            db,
            grant_id=grant.id,
            client_id=flow.client_id,
            redirect_uri=flow.redirect_uri,
            code_challenge=flow.code_challenge,
        )

    code = sign_in(access, request, add_code).extra
    assert code is not None
    return code
