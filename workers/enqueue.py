"""Enqueue sync work on the grant's provider queue. Call only after the caller's commit."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.crypto import SecretBox
from pipeline.grants.schemas import GrantRequest
from pipeline.presets import preset
from workers.app import app


def sync_grant(grant_id: str, provider: str) -> None:
    """Discover the grant's folders and sync each of them."""
    app.send_task("pipeline.sync.grant", args=[grant_id], queue=preset(provider).queue)


def sync_folder(
    grant_id: str,
    folder_id: str,
    provider: str,
    *,
    countdown: float = 0,
    uid_range: tuple[int, int] | None = None,
) -> None:
    """Sync one folder (initial window or new mail), or one UID range of its initial sync."""
    args: list[object] = [grant_id, folder_id]
    if uid_range is not None:
        args.extend(uid_range)
    app.send_task(
        "pipeline.sync.folder",
        args=args,
        queue=preset(provider).queue,
        countdown=countdown or None,
    )


def create_grant(request: GrantRequest, settings: Settings) -> str:
    """Enqueue ``pipeline.grants.create`` with the passwords sealed; returns the task id.

    This is how another application connects an account through Celery: the plaintext
    password never enters the broker, Flower or a log.
    """
    box = SecretBox(settings.encryption_key_list)
    payload = request.model_dump(mode="json", exclude={"password", "smtp_password"})
    payload["password_sealed"] = box.seal(request.password.get_secret_value())
    if request.smtp_password is not None:
        payload["smtp_password_sealed"] = box.seal(request.smtp_password.get_secret_value())
    provider = request.resolve().provider
    result = app.send_task("pipeline.grants.create", args=[payload], queue=preset(provider).queue)
    return str(result.id)
