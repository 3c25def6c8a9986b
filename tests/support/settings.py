"""Settings for one test: a copy with fields of one section changed.

``settings.model_copy(update={"sync": settings.sync.model_copy(update={...})})`` said once::

    small = section_changed(settings, "sync", batch_size=10)

A name the section does not have is an error here: ``model_copy`` would set it without a word,
and the test would run with the default it meant to change.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipeline.config import Settings


def section_changed(settings: Settings, section: str, **fields: Any) -> Settings:
    """``settings`` with ``fields`` of its ``section`` (``"sync"``, ``"api"``, ...) changed;
    everything else is shared with ``settings``.

    Raises:
        TypeError: ``section`` is not a section, or a field is not one of its fields.
    """
    current = getattr(settings, section, None)
    if not isinstance(current, BaseModel):
        raise TypeError(f"Settings has no section {section!r}")
    unknown = sorted(fields.keys() - type(current).model_fields.keys())
    if unknown:
        raise TypeError(f"Settings.{section} has no field {', '.join(unknown)}")
    return settings.model_copy(update={section: current.model_copy(update=fields)})
