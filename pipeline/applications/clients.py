"""Who may start a hosted sign-in, and where it may send the user back.

One install serves one application: only its own client id is accepted, and only redirect URIs
registered for it (``/v3/applications/redirect-uris``) that match exactly. A redirect URI is an
absolute http(s) URL without a fragment, https unless it points at this machine.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from pipeline.applications.repository import ApplicationRepository
from pipeline.errors import InvalidRequest

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # http is allowed for these only


def checked_redirect_uri(url: str) -> str:
    """``url`` if it can be registered as a redirect URI.

    Raises:
        InvalidRequest: It is not an absolute http(s) URL without a fragment, or it is plain
            http to another host than this machine.
    """
    parts = urlsplit(url)
    local = parts.hostname in LOCAL_HOSTS
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        raise InvalidRequest("A redirect URI is an absolute http(s) URL without a fragment.")
    if parts.scheme == "http" and not local:
        raise InvalidRequest("A redirect URI must use https (http only for localhost).")
    return url


def register_redirect_uri(db: Session, url: str, platform: str) -> dict[str, Any]:
    """Register ``url`` (checked by :func:`checked_redirect_uri`) for hosted sign-ins to send
    users back to; returns the stored row. The caller commits.

    Raises:
        InvalidRequest: ``url`` cannot be a redirect URI.
    """
    return ApplicationRepository(db).add_redirect_uri(checked_redirect_uri(url), platform)


def check_client(db: Session, application_id: str, client_id: str, redirect_uri: str) -> None:
    """Refuse a client id other than the application's, or a redirect URI not registered.

    Raises:
        InvalidRequest: Which of the two, and how to fix it.
    """
    if not hmac.compare_digest(client_id.encode(), application_id.encode()):
        raise InvalidRequest(
            "Unknown client_id: use the application id that GET /v3/applications shows "
            "(set by IMAP_PIPELINE_API_CLIENT_ID)."
        )
    if not ApplicationRepository(db).redirect_uri_registered(redirect_uri):
        raise InvalidRequest(
            "redirect_uri is not registered for this application: register the exact URL with "
            "POST /v3/applications/redirect-uris."
        )
