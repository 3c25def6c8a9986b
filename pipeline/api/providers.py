"""``POST /v3/providers/detect?email=``: which provider preset serves an address."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from pipeline.api.deps import ok
from pipeline.presets import detect

router = APIRouter(tags=["providers"])


def detection(email: str) -> dict[str, Any]:
    """What the presets know about an address (``detected`` is False for unknown domains)."""
    found = detect(email)
    return {
        "email_address": email,
        "detected": found.name != "generic",
        "provider": "imap",
        "type": found.name,
        "settings": {
            "imap_host": found.imap_host,
            "imap_port": found.imap_port if found.imap_host else None,
            "smtp_host": found.smtp_host,
            "smtp_port": found.smtp_port if found.smtp_host else None,
        },
        "app_password_help": found.app_password_help or None,
    }


EmailQuery = Annotated[str, Query(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


@router.post("/providers/detect", summary="Detect an address's provider")
def detect_provider(request: Request, email: EmailQuery) -> dict[str, Any]:
    """The preset for ``email``'s domain."""
    return ok(request, detection(email.strip()))


@router.get("/providers/detect", include_in_schema=False)
def detect_provider_get(request: Request, email: EmailQuery) -> dict[str, Any]:
    """Same as the POST, for clients that use GET."""
    return ok(request, detection(email.strip()))
