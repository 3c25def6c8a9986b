"""An HTML body as lines for :mod:`pipeline.messages.clean`: parsed by ``html.parser`` into a
forgiving tree; scripts, styles, signature blocks and (when asked) quoted history removed from
it; the rest written as lines, each its visible text and its markup (HTML or Markdown, with
links, images and tables as :class:`CleanOptions` say).

Only the first :data:`MAX_ELEMENTS` tags are read, and tags nest at most :data:`MAX_DEPTH` deep
(deeper ones are read as their text).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Final

# html.parser and the tree cost 15-50 us a tag: markup past this many tags is not read, so a
# message costs well under a second (20 in a request; a real one has a few thousand tags)
MAX_ELEMENTS: Final = 10_000
MAX_DEPTH: Final = 200  # tags nested deeper are flattened (the renderer recurses per level)


@dataclass(frozen=True, slots=True)
class CleanOptions:
    """What Nylas' request body asks for (its defaults; see the API reference)."""

    ignore_links: bool = True  # <a> removed, its text kept
    ignore_images: bool = True
    images_as_markdown: bool = True  # a kept image as ![alt](src)
    ignore_tables: bool = True  # table tags removed, each row's text kept as a line
    remove_conclusion_phrases: bool = True  # "Best,", "Thanks!" and the name after them
    html_as_markdown: bool = False


@dataclass(slots=True)
class Line:
    """One line of the conversation: its visible text, its markup, and a kept table row's
    cells (markup each)."""

    text: str
    markup: str
    cells: list[str] | None = None

    @property
    def blank(self) -> bool:
        """No text, no markup and no cells: a paragraph break."""
        return not self.text.strip() and not self.cells and not self.markup


# --- HTML: a tree -------------------------------------------------------------------------------

_VOID: Final = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr"}
)  # fmt: skip
_DROPPED: Final = frozenset(
    {"script", "style", "head", "title", "template", "noscript", "svg", "object", "iframe",
     "select", "button", "map"}
)  # fmt: skip
_QUOTE_CLASSES: Final = frozenset(
    {"gmail_quote", "gmail_quote_container", "gmail_attr", "yahoo_quoted", "moz-cite-prefix",
     "protonmail_quote", "outlookmessageheader", "zmail_extra"}
)  # fmt: skip
_SIGNATURE_CLASSES: Final = frozenset({"gmail_signature", "moz-signature"})
_SIGNATURE_IDS: Final = frozenset({"signature", "applemailsignature"})
# Outlook: everything after these is the message replied to (its header, then its body)
_CUT_IDS: Final = frozenset({"appendonsend", "divrplyfwdmsg"})
# A start tag that ends open ones of these first, as browsers do (a <p> ends an open <p>)
_SELF_CLOSING_SIBLINGS: Final = {"p": {"p"}, "li": {"li"}, "tr": {"tr", "td", "th"},
                                 "td": {"td", "th"}, "th": {"td", "th"}}  # fmt: skip


@dataclass(slots=True, eq=False)
class _Node:
    tag: str
    attrs: dict[str, str]
    children: list[_Node | str] = field(default_factory=list)
    parent: _Node | None = None

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").lower().split())


class _EnoughMarkup(Exception):
    """:data:`MAX_ELEMENTS` tags were read."""


class _TreeBuilder(HTMLParser):
    """A forgiving tree of the markup: unknown end tags are ignored, open ones close with
    their parent, and nesting stops at :data:`MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#root", {})
        self._open: list[_Node] = [self.root]
        self._elements = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._elements += 1
        if self._elements > MAX_ELEMENTS:
            raise _EnoughMarkup
        if tag == "body":  # an unclosed <head> ends where the body starts
            while len(self._open) > 1 and self._open[-1].tag != "html":
                self._open.pop()
        closes = _SELF_CLOSING_SIBLINGS.get(tag, ())
        while len(self._open) > 1 and self._open[-1].tag in closes:
            self._open.pop()
        node = _Node(tag, {k.lower(): v or "" for k, v in attrs}, parent=self._open[-1])
        self._open[-1].children.append(node)
        if tag not in _VOID and len(self._open) < MAX_DEPTH:
            self._open.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._elements += 1
        if self._elements > MAX_ELEMENTS:
            raise _EnoughMarkup
        node = _Node(tag, {k.lower(): v or "" for k, v in attrs}, parent=self._open[-1])
        self._open[-1].children.append(node)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)


def _parse(markup: str) -> _Node:
    builder = _TreeBuilder()
    try:
        builder.feed(markup)  # fed once: html.parser rescans an unfinished construct per feed
        builder.close()
    except (_EnoughMarkup, AssertionError, ValueError, IndexError):
        pass  # what was read so far stays (html.parser gives up on some broken declarations)
    return builder.root


def _is_quote(node: _Node) -> bool:
    return node.tag == "blockquote" or bool(node.classes() & _QUOTE_CLASSES)


def _is_noise(node: _Node) -> bool:
    """Scripts, styles and the like, and signature blocks."""
    return node.tag in _DROPPED or (
        bool(node.classes() & _SIGNATURE_CLASSES)
        or node.attrs.get("id", "").lower() in _SIGNATURE_IDS
        or node.attrs.get("data-smartmail") == "gmail_signature"
    )


def _prune(root: _Node, drop_quotes: bool) -> None:
    """Remove dropped elements, signatures and (with ``drop_quotes``) quoted history."""
    cut: _Node | None = None
    stack = [root]
    while stack:
        node = stack.pop()
        kept: list[_Node | str] = []
        for child in node.children:
            if isinstance(child, str):
                kept.append(child)
            elif _is_noise(child) or (drop_quotes and _is_quote(child)):
                continue
            elif drop_quotes and cut is None and child.attrs.get("id", "").lower() in _CUT_IDS:
                cut = child
                kept.append(child)
            else:
                kept.append(child)
                stack.append(child)
        node.children = kept
    after = 0  # the cut itself goes, then what follows it and each of its ancestors
    while cut is not None and cut.parent is not None:
        siblings = cut.parent.children
        del siblings[siblings.index(cut) + after :]
        cut, after = cut.parent, 1


# --- HTML: the tree as lines --------------------------------------------------------------------

_BLOCK: Final = frozenset(
    {"address", "article", "aside", "center", "dd", "div", "dl", "dt", "fieldset",
     "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "section",
     "summary", "details", "caption", "tbody", "thead", "tfoot"}
)  # fmt: skip
_PARAGRAPH: Final = frozenset({"p", "ul", "ol", "blockquote", "pre", "h1", "h2", "h3", "h4",
                               "h5", "h6", "table"})  # fmt: skip
_SPACE_RE: Final = re.compile(r"\s+")
_INVISIBLE: Final = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad"))
_LINK_SCHEMES: Final = ("http://", "https://", "mailto:", "tel:")
_IMAGE_SCHEMES: Final = ("http://", "https://", "cid:")


class _Renderer:
    """Writes a pruned tree as lines of text and markup (HTML or Markdown)."""

    def __init__(self, options: CleanOptions) -> None:
        self.options = options
        self.markdown = options.html_as_markdown
        self.lines: list[Line] = []
        self._text: list[str] = []
        self._markup: list[str] = []
        self._cells: list[str] | None = None  # the kept table row being written
        self._visible = 0  # characters other than spaces written on the current line
        self._pre = 0
        self._tables = 0

    # output
    def write(self, text: str, markup: str | None = None) -> None:
        if not self._pre:
            text = _SPACE_RE.sub(" ", text)
            if not self._text or self._text[-1].endswith(" "):
                text = text.lstrip(" ")
        if not text and not markup:
            return
        self._visible += len(text) - text.count(" ")
        self._text.append(text)
        self._markup.append(markup if markup is not None else self.escape(text))

    def escape(self, text: str) -> str:
        return text if self.markdown else html.escape(text, quote=False)

    def end_line(self, *, blank: bool = False) -> None:
        text, markup = "".join(self._text).strip(), "".join(self._markup).strip()
        self._text, self._markup, self._visible = [], [], 0
        if self._cells is not None:
            if text:
                self._cells.append(markup)
            return
        if text or markup:
            self.lines.append(Line(text, markup))
        if blank and self.lines and (self.lines[-1].text or self.lines[-1].markup):
            self.lines.append(Line("", ""))

    # walking
    def render(self, node: _Node) -> None:
        for child in node.children:
            if isinstance(child, str):
                self._data(child.translate(_INVISIBLE))
            else:
                self._element(child)

    def _data(self, data: str) -> None:
        if not self._pre:
            self.write(data)
            return
        first, *rest = data.split("\n")
        self.write(first)
        for piece in rest:
            self.end_line()
            self.write(piece)

    def _element(self, node: _Node) -> None:
        tag = node.tag
        if tag == "br":
            if self._cells is not None:  # within a kept table's cell
                self.write(" ")
            elif self._text:
                self.end_line()
            else:
                self.lines.append(Line("", ""))
        elif tag == "img":
            self._image(node)
        elif tag in ("tr", "td", "th", "table") and not self.options.ignore_tables:
            self._kept_table(node)
        elif tag in ("td", "th"):
            self.write(" ")
            self.render(node)
            self.write(" ")
        elif tag == "tr":
            self.end_line()
            self.render(node)
            self.end_line()
        elif tag in ("a", "b", "strong", "i", "em"):
            self._inline(node)
        elif tag in _PARAGRAPH or tag in _BLOCK:
            self._block(node)
        else:
            self.render(node)

    def _block(self, node: _Node) -> None:
        paragraph = node.tag in _PARAGRAPH
        self.end_line(blank=paragraph)
        if node.tag == "li":
            self.write("- ", "- ")
        elif node.tag in ("h1", "h2", "h3", "h4", "h5", "h6") and self.markdown:
            self.write("#" * int(node.tag[1]) + " ", "#" * int(node.tag[1]) + " ")
        self._pre += node.tag == "pre"
        self.render(node)
        self._pre -= node.tag == "pre"
        self.end_line(blank=paragraph)

    def _inline(self, node: _Node) -> None:
        """Bold, italics and links around their text, when they stay within one line."""
        lines, start, visible = len(self.lines), len(self._markup), self._visible
        self.render(node)
        if len(self.lines) != lines or self._visible == visible or len(self._markup) < start:
            return
        inner = "".join(self._markup[start:]).strip()
        href = node.attrs.get("href", "").strip()
        if node.tag == "a":
            if self.options.ignore_links or not href.lower().startswith(_LINK_SCHEMES):
                return
            wrapped = (
                f"[{inner}]({href})"
                if self.markdown
                else f'<a href="{html.escape(href)}">{inner}</a>'
            )
        elif node.tag in ("b", "strong"):
            wrapped = f"**{inner}**" if self.markdown else f"<b>{inner}</b>"
        else:
            wrapped = f"_{inner}_" if self.markdown else f"<i>{inner}</i>"
        lead = " " if "".join(self._markup[start:]).startswith(" ") else ""
        del self._markup[start:]
        self._markup.append(lead + wrapped)

    def _image(self, node: _Node) -> None:
        src = node.attrs.get("src", "").strip()
        tiny = node.attrs.get("width", "").strip() in ("0", "1") or node.attrs.get(
            "height", ""
        ).strip() in ("0", "1")  # a tracking pixel is nobody's content
        if self.options.ignore_images or tiny or not src.lower().startswith(_IMAGE_SCHEMES):
            return
        alt = _SPACE_RE.sub(" ", node.attrs.get("alt", "")).strip()
        if self.options.images_as_markdown or self.markdown:
            self.write(" ", f" ![{alt}]({src})")
        else:
            self.write(" ", f' <img src="{html.escape(src)}" alt="{html.escape(alt)}">')

    def _kept_table(self, node: _Node) -> None:
        """``ignore_tables: false``: the outermost table's rows as rows of cells; a table
        inside a cell is read as text."""
        if node.tag == "table":
            self.end_line(blank=True)
            self._tables += 1
            self.render(node)
            self._tables -= 1
            self.end_line(blank=True)
        elif node.tag == "tr" and self._tables == 1 and self._cells is None:
            self.end_line()
            self._cells = []
            self.render(node)
            self.end_line()
            cells, self._cells = self._cells, None
            if cells:
                self.lines.append(Line(" ".join(_strip_tags(c) for c in cells), "", cells))
        elif node.tag in ("td", "th") and self._cells is not None:
            self.end_line()
            self.render(node)
            self.end_line()
        else:  # a nested table's parts: text
            self.write(" ")
            self.render(node)
            self.write(" ")


_TAG_RE: Final = re.compile(r"<[^>]*>")


def _strip_tags(markup: str) -> str:
    return html.unescape(_TAG_RE.sub("", markup))


def html_lines(body: str, options: CleanOptions, drop_quotes: bool) -> list[Line]:
    root = _parse(body)
    _prune(root, drop_quotes)
    renderer = _Renderer(options)
    renderer.render(root)
    renderer.end_line()
    return renderer.lines
