"""The MIME test corpus shipped in the repository (``tests/corpus``, licences in its LICENSES/)."""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CORPUS_SIZE = 250  # files in INDEX.md


def corpus_files() -> list[Path]:
    """Every ``.eml`` of the corpus, in a stable order."""
    return sorted(CORPUS.rglob("*.eml"))
