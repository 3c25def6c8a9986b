"""Text: the visible text of HTML (bounded by :data:`HTML_TEXT_SCAN_CHARS`) and the snippet
of a message's displayed blocks (:data:`SNIPPET_CHARS`, whitespace collapsed).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Final

SNIPPET_CHARS: Final = 100  # Nylas v3 snippets are the first 100 characters


@dataclass(slots=True)
class _Block:
    """One displayed unit: a text part, or an alternative with its renderings."""

    plain: str | None = None
    html: str | None = None


_SKIP_TAGS: Final = frozenset({"script", "style", "head", "title", "template"})
_INLINE_TAGS: Final = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "dfn", "em", "font",
        "i", "kbd", "mark", "q", "s", "samp", "small", "span", "strike", "strong", "sub",
        "sup", "time", "tt", "u", "var", "wbr", "o:p",
    }
)  # fmt: skip
_INVISIBLE: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad\ufffc"))
_WORD_RE: Final = re.compile(r"\S+")
_HTML_CHUNK: Final = 8192
# HTML read for visible text (snippets, blank renderings): a snippet's 100 characters are in
# the first few kilobytes of any real message.
HTML_TEXT_SCAN_CHARS: Final = 256 * 1024


class _HtmlText(HTMLParser):
    """Collects the visible text of HTML; block-level tags separate words."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.visible_chars = 0
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip_depth = 0  # an unclosed <head> ends where the body starts
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag not in _INLINE_TAGS:
            self.pieces.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _INLINE_TAGS and tag not in _SKIP_TAGS:
            self.pieces.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag not in _INLINE_TAGS:
            self.pieces.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.pieces.append(data)
            self.visible_chars += len(data.strip())


def _html_to_text(markup: str, enough: int | None = None) -> str:
    """Visible text of HTML; stops early once ``enough`` visible characters were seen.

    Only the first :data:`HTML_TEXT_SCAN_CHARS` are read: ``html.parser`` rescans an
    unterminated comment or tag from its start on every chunk fed (quadratic time in the
    markup), and the callers only need the beginning (a snippet, "is it blank?").
    """
    markup = markup[:HTML_TEXT_SCAN_CHARS]
    parser = _HtmlText()
    try:
        for start in range(0, len(markup), _HTML_CHUNK):
            parser.feed(markup[start : start + _HTML_CHUNK])
            if enough is not None and parser.visible_chars >= enough:
                break
        parser.close()
    except (AssertionError, ValueError, IndexError):
        # html.parser gives up on some malformed declarations; strip tags crudely.
        stripped = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
        return html.unescape(re.sub(r"(?s)<[^>]*>", " ", stripped))
    return "".join(parser.pieces)


def _collapsed_prefix(texts: Iterable[str], limit: int) -> str:
    """The first ``limit`` characters of the texts with whitespace collapsed (lazily)."""
    words: list[str] = []
    length = 0
    for text in texts:
        for match in _WORD_RE.finditer(text):
            word = match.group(0).translate(_INVISIBLE)
            if not word:
                continue
            words.append(word)
            length += len(word) + 1
            if length > limit:
                return " ".join(words)[:limit].rstrip()
    return " ".join(words)[:limit].rstrip()


def _snippet(blocks: Sequence[_Block]) -> str:
    def texts() -> Iterable[str]:
        for block in blocks:
            if block.plain is not None and (block.plain.strip() or block.html is None):
                yield block.plain
            elif block.html is not None:
                yield _html_to_text(block.html, enough=SNIPPET_CHARS * 2)

    return _collapsed_prefix(texts(), SNIPPET_CHARS)
