"""Hosted authentication: a sign-in page for IMAP accounts and the code exchange.

Flow (the OAuth 2.0 authorization-code shape Nylas clients expect)::

    GET  /v3/connect/auth?client_id&redirect_uri&response_type=code&provider=imap&state
         (provider icloud or yahoo: the same form, signed in with that provider's preset)
         [&login_hint][&code_challenge&code_challenge_method=S256]
         -> an HTML form: address, (app) password, provider guidance, advanced host/port
    POST /v3/connect/auth   (the form; a real IMAP login)
         -> wrong password: the form again with the server's answer
         -> success: 303 to redirect_uri?code=...&state=...
    POST /v3/connect/token  {client_id, client_secret=<API key>, grant_type=authorization_code,
                             code, redirect_uri[, code_verifier]}
         -> {"grant_id", "email", "provider", ...}

Only the application's own ``client_id`` is accepted (``IMAP_PIPELINE_API_CLIENT_ID``, shown by
``GET /v3/applications``: one install serves one application, as one Nylas application owns its
API keys), and only redirect URIs registered for it (``/v3/applications/redirect-uris``, stored
in Postgres) that match exactly (:mod:`pipeline.applications.clients`); anything else is a 400
in the v3 error envelope, and the page never redirects anywhere else. The form carries an HMAC
over its parameters (so a POST cannot swap the redirect URI; the form's state is signed and
checked, and its sign-in run, by :mod:`pipeline.applications.hosted`: this module is the page
and the HTTP answers); codes are random, stored only as
SHA-256 hashes, single-use and valid for ``CODE_TTL_S`` (:mod:`pipeline.applications.codes`;
the redirect URIs and codes are stored by :mod:`pipeline.applications.repository`; the code
exchange's decisions are :mod:`pipeline.applications.token`'s, its OAuth answers this
module's). The page is the only HTML this API serves: the browser needs it.
"""

from __future__ import annotations

import html
import logging
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from pipeline.api.deps import ApiState, Db, State, ok, page
from pipeline.api.errors import (
    ApiError,
    from_pipeline_error,
    not_found,
    request_id_of,
)
from pipeline.api.gate import client_of
from pipeline.applications import clients, hosted
from pipeline.applications import token as token_exchange
from pipeline.applications.hosted import Flow
from pipeline.applications.repository import ApplicationRepository
from pipeline.errors import ConfigurationError, GrantConflict, ImapAuthError, ImapError
from pipeline.limits import RateLimited
from pipeline.presets import PRESETS, detect

log = logging.getLogger(__name__)

public = APIRouter(tags=["hosted auth"])  # the browser's routes: no API key
router = APIRouter(tags=["hosted auth"])  # redirect URIs: API key

MAX_PARAM_CHARS = 2000
ADVANCED_FIELDS = ("imap_username", "imap_host", "imap_port", "smtp_host", "smtp_port")
# form-action also governs where the form's POST may redirect: the page adds the registered
# redirect URI's origin (browsers block the 303 otherwise).
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'{extra}; "
    "frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP.format(extra=""),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


# --- the application and its redirect URIs (API key) -----------------------------------------


@router.get("/applications", summary="The application: its id (client_id) and redirect URIs")
def application(request: Request, db: Db, api: State) -> dict[str, Any]:
    """This install's one application, in the shape of Nylas' application details."""
    return ok(
        request,
        {
            "application_id": api.settings.api.client_id,
            "organization_id": api.settings.api.client_id,
            "region": "self-hosted",
            "environment": "production",
            "branding": {"name": "imap-pipeline"},
            "callback_uris": [_uri_view(r) for r in ApplicationRepository(db).redirect_uris()],
        },
    )


class RedirectUriRequest(BaseModel):
    """Body of ``POST /v3/applications/redirect-uris``."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=8, max_length=MAX_PARAM_CHARS)
    platform: str = Field(default="web", max_length=32)


def _uri_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "url": row["url"], "platform": row["platform"], "settings": {}}


@router.post("/applications/redirect-uris", summary="Register a redirect URI")
def add_redirect_uri(request: Request, db: Db, body: RedirectUriRequest) -> dict[str, Any]:
    """Allow hosted auth to send users back to ``url``."""
    row = clients.register_redirect_uri(db, body.url, body.platform)
    db.commit()
    return ok(request, _uri_view(row))


@router.get("/applications/redirect-uris", summary="List redirect URIs")
def list_redirect_uris(request: Request, db: Db) -> dict[str, Any]:
    """Every registered redirect URI."""
    return page(request, [_uri_view(r) for r in ApplicationRepository(db).redirect_uris()], None)


@router.get("/applications/redirect-uris/{redirect_uri_id}", summary="Get a redirect URI")
def get_redirect_uri(request: Request, db: Db, redirect_uri_id: str) -> dict[str, Any]:
    """One registered redirect URI."""
    row = ApplicationRepository(db).redirect_uri(redirect_uri_id)
    if row is None:
        raise not_found(f"No redirect URI {redirect_uri_id!r}.")
    return ok(request, _uri_view(row))


@router.delete("/applications/redirect-uris/{redirect_uri_id}", summary="Remove a redirect URI")
def delete_redirect_uri(request: Request, db: Db, redirect_uri_id: str) -> dict[str, Any]:
    """Unregister a redirect URI."""
    if not ApplicationRepository(db).delete_redirect_uri(redirect_uri_id):
        raise not_found(f"No redirect URI {redirect_uri_id!r}.")
    db.commit()
    return {"request_id": request_id_of(request)}


# --- the sign-in page (browser) ---------------------------------------------------------------


def _form_key(api: ApiState) -> bytes:
    # rotating the first encryption key voids open forms
    return hosted.form_key(api.settings.encryption_key_list[0])


def _signed(api: ApiState, flow: Flow) -> str:
    return hosted.sign(_form_key(api), flow)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _page(title: str, body: str, status: int = 200, *, redirect_uri: str = "") -> HTMLResponse:
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;color:#1f2328}}
main{{max-width:26rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:.5rem;
box-shadow:0 1px 3px #0002}}
h1{{font-size:1.3rem;margin-top:0}} label{{display:block;margin:.8rem 0 .2rem;font-weight:600}}
input{{width:100%;box-sizing:border-box;padding:.5rem;border:1px solid #bbb;border-radius:.3rem}}
button{{margin-top:1.2rem;width:100%;padding:.6rem;border:0;border-radius:.3rem;
background:#2457c5;color:#fff;font-size:1rem}}
.error{{background:#fde7e9;border:1px solid #e5a0a6;padding:.6rem;border-radius:.3rem}}
.help{{background:#eef4ff;padding:.6rem;border-radius:.3rem;font-size:.9rem}}
details{{margin-top:1rem}} small{{color:#555}}
</style></head><body><main>{body}</main></body></html>"""
    headers = dict(PAGE_HEADERS)
    if redirect_uri:
        headers["Content-Security-Policy"] = CSP.format(extra=" " + _origin(redirect_uri))
    return HTMLResponse(document, status_code=status, headers=headers)


def _error_page(message: str, status: int = 400) -> HTMLResponse:
    return _page(
        "Cannot sign in",
        f"<h1>Cannot sign in</h1><p class='error'>{html.escape(message)}</p>",
        status,
    )


def _form(
    api: ApiState, flow: Flow, *, email: str = "", values: dict[str, str], error: str = ""
) -> str:
    preset = (
        PRESETS[flow.provider] if flow.provider in PRESETS else detect(email) if email else None
    )
    helps = "".join(
        f"<li>{html.escape(p.app_password_help)}</li>"
        for p in PRESETS.values()
        if p.app_password_help
    )
    guidance = (
        f"<p class='help'>{html.escape(preset.app_password_help)}</p>"
        if preset and preset.app_password_help
        else ""
    )

    advanced = any(values.get(k) for k in ADVANCED_FIELDS)  # keep them visible after an error

    def field(name: str, label: str, kind: str = "text", extra: str = "") -> str:
        value = html.escape(values.get(name, ""), quote=True)
        return (
            f"<label for='{name}'>{label}</label>"
            f"<input id='{name}' name='{name}' type='{kind}' value='{value}' {extra}>"
        )

    return (
        "<h1>Connect your email account</h1>"
        + (f"<p class='error' role='alert'>{html.escape(error)}</p>" if error else "")
        + "<form method='post' action='/v3/connect/auth'>"
        + f"<input type='hidden' name='flow' value='{html.escape(_signed(api, flow), quote=True)}'>"
        + field("email", "Email address", "email", "required autocomplete='username'")
        + "<label for='password'>Password or app password</label>"
        + "<input id='password' name='password' type='password' required "
        + "autocomplete='current-password'>"
        + guidance
        + "<details><summary>Where do I get an app password?</summary><ul>"
        + helps
        + "</ul></details>"
        + ("<details open>" if advanced else "<details>")
        + "<summary>Advanced: server settings</summary>"
        + "<small>Only needed when your provider is not detected from your address.</small>"
        + field("imap_username", "IMAP username (if not the address)")
        + field("imap_host", "IMAP server")
        + field("imap_port", "IMAP port", "number", "min='1' max='65535'")
        + field("smtp_host", "SMTP server")
        + field("smtp_port", "SMTP port", "number", "min='1' max='65535'")
        + "</details><button type='submit'>Connect</button></form>"
    )


Param = Annotated[str, Query(max_length=MAX_PARAM_CHARS)]


@public.get("/connect/auth", response_class=HTMLResponse, summary="Hosted sign-in page")
def auth_page(
    db: Db,
    api: State,
    client_id: Param,
    redirect_uri: Param,
    response_type: Param = "code",
    provider: Param = "imap",
    state: Param = "",
    login_hint: Param = "",
    code_challenge: Param = "",
    code_challenge_method: Param = "",
) -> Response:
    """The sign-in form, for the application's client_id and a redirect URI registered for it.

    Raises:
        InvalidRequest, ApiError: 400 ``invalid_request_error`` (JSON, nothing redirected) for
            another client_id, an unregistered redirect URI or an unsupported parameter.
    """
    flow = hosted.begin(
        db,
        api.settings.api.client_id,
        client_id=client_id,
        redirect_uri=redirect_uri,
        response_type=response_type,
        provider=provider,
        state=state,
        code_challenge=code_challenge,
        code_challenge_method=code_challenge_method,
    )
    return _page(
        "Connect your email account",
        _form(api, flow, email=login_hint, values={"email": login_hint}),
        redirect_uri=redirect_uri,
    )


@public.post("/connect/auth", response_class=HTMLResponse, include_in_schema=False)
async def auth_submit(request: Request, db: Db, api: State) -> Response:
    """The form's POST: log in; on success redirect with a code, else show the form again."""
    form = await request.form(max_files=0, max_fields=12)
    try:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()
    flow = await run_in_threadpool(
        hosted.accepted, db, _form_key(api), api.settings.api.client_id, fields.get("flow", "")
    )
    db.close()  # no database connection is held while the sign-in runs
    if flow is None:
        return _error_page("This sign-in form has expired. Start again from the application.")
    password = fields.pop("password", "")
    values = {k: v.strip()[:MAX_PARAM_CHARS] for k, v in fields.items() if k != "flow"}
    headers: dict[str, str] = {}
    try:
        grant_request = hosted.grant_request(values, password, flow.provider)
        code = await api.sign_ins.run(
            client_of(request), lambda: hosted.connect(api, flow, grant_request)
        )
    except (ApiError, RateLimited) as exc:  # a full gate, no login token, the deadline
        refused = from_pipeline_error(exc)  # said on the page
        if refused.status not in (429, 504):
            raise
        error, status, headers = refused.message, refused.status, refused.headers
    except ImapAuthError:
        error = (
            "The server refused this address and password. Many providers need an app "
            "password: see below."
        )
        status = 401
    except GrantConflict as exc:
        error, status = str(exc), 409
    except ConfigurationError as exc:
        error, status = str(exc), 400
    except ImapError as exc:
        error, status = f"Could not reach your mail server: {exc}", 502
    else:
        log.info("hosted auth: grant connected", extra={"request_id": request_id_of(request)})
        return RedirectResponse(
            hosted.redirect_to(flow, code), status_code=303, headers=PAGE_HEADERS
        )
    response = _page(
        "Connect your email account",
        _form(api, flow, email=values.get("email", ""), values=values, error=error),
        status,
        redirect_uri=flow.redirect_uri,
    )
    response.headers.update(headers)
    return response


# --- the code exchange (server to server) -------------------------------------------------------


class TokenRequest(BaseModel):
    """Body of ``POST /v3/connect/token``."""

    model_config = ConfigDict(extra="ignore")

    client_id: str = Field(max_length=MAX_PARAM_CHARS)
    client_secret: str | None = Field(default=None, max_length=MAX_PARAM_CHARS)
    grant_type: str = Field(max_length=64)
    code: str = Field(max_length=MAX_PARAM_CHARS)
    redirect_uri: str = Field(max_length=MAX_PARAM_CHARS)
    code_verifier: str | None = Field(default=None, max_length=MAX_PARAM_CHARS)


def _oauth_error(request: Request, status: int, error: str, description: str) -> JSONResponse:
    # /connect/token answers in the OAuth error shape, which the SDK parses for this path.
    return JSONResponse(
        {
            "request_id": request_id_of(request),
            "error": error,
            "error_code": status,
            "error_description": description,
            "error_uri": "https://datatracker.ietf.org/doc/html/rfc6749#section-5.2",
        },
        status_code=status,
    )


@public.post("/connect/token", summary="Exchange an authorization code for the grant")
async def token(request: Request, db: Db, api: State) -> Response:
    """Redeem a code (once) for its grant; ``client_secret`` (or the header) is an API key."""
    try:
        body = TokenRequest.model_validate_json(await request.body())
    except ValidationError:
        return _oauth_error(
            request,
            400,
            "invalid_request",
            "Send JSON with client_id, grant_type, code, redirect_uri.",
        )
    header = request.headers.get("authorization", "")
    presented = body.client_secret or (header[7:] if header.lower().startswith("bearer ") else "")
    if not presented or not api.keys.accepts(presented):
        return _oauth_error(request, 401, "invalid_client", "client_secret must be an API key.")
    try:
        # On a worker thread: a slow database must not stall every other request's loop.
        grant = await run_in_threadpool(
            partial(
                token_exchange.exchange,
                client_id=body.client_id,
                grant_type=body.grant_type,
                code=body.code,
                redirect_uri=body.redirect_uri,
                verifier=body.code_verifier,
            ),
            db,
            api.settings.api.client_id,
        )
    except token_exchange.TokenRefused as exc:
        status = 401 if exc.error == "invalid_client" else 400  # RFC 6749 section 5.2
        return _oauth_error(request, status, exc.error, str(exc))
    return JSONResponse(
        {
            "request_id": request_id_of(request),
            # API-key mode: the grant id is what the application uses; no access token exists.
            "access_token": "",
            "token_type": "Bearer",
            "expires_in": 0,
            "grant_id": grant.id,
            "email": grant.email,
            "provider": "imap",
            "scope": "",
        }
    )
