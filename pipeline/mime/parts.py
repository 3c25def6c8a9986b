"""Parts: the parsed tree sorted into body text and attachments.

``_Walker`` numbers parts as IMAP sections, applies the multipart/alternative and related
rules, decodes text parts into ``_Block`` values and turns everything else into
:class:`AttachmentInfo` (payload decoded once, only to size it).
"""

from __future__ import annotations

import binascii
import html
import re
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO
from typing import Any, Final

from pipeline.mime.charsets import _Context, _resolve_charset
from pipeline.mime.framing import SNIFF_BYTES, _split
from pipeline.mime.headers import (
    _CONTROL_RE,
    _b64_lenient,
    _clean_text,
    _decode_header_value,
    _media_type,
    _Params,
    _parse_params,
    _to_bytes,
    _unfold,
)
from pipeline.mime.text import _Block, _html_to_text
from pipeline.mime.values import AttachmentInfo, _Part

_HTML_TYPES: Final = frozenset({"text/html"})
_PLAIN_TYPES: Final = frozenset({"text/plain"})
_MARKUP_PLAIN_TYPES: Final = frozenset({"text/enriched", "text/richtext"})
_BODY_TYPES: Final = _HTML_TYPES | _PLAIN_TYPES | _MARKUP_PLAIN_TYPES
# Transfer encodings Message.get_payload(decode=True) undoes itself.
_PYTHON_DECODED_CTES: Final = frozenset(
    {"base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue"}
)
# Alternatives that are not text but are worth keeping, e.g. an invitation next to the
# HTML version of the same invitation.
_ALTERNATIVE_KEEP_TYPES: Final = frozenset({"text/calendar", "application/ics"})
_META_CHARSET_RE: Final = re.compile(
    rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE
)
# Base64 lines never contain inner blanks; text that does was never base64 encoded.
_NOT_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/=][ \t]+[A-Za-z0-9+/]")
_SERIALIZE_POLICY: Final = compat32.clone(linesep="\r\n", max_line_length=0)


@dataclass(frozen=True, slots=True)
class _PartInfo:
    content_type: str
    charset: str | None
    cte: str
    disposition: str | None
    filename: str | None
    content_id: str | None
    start: str | None  # multipart/related root Content-ID


def _first_header(part: _Part, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.strip().lower() == name:
            return value
    return None


def _clean_filename(name: str | None) -> str | None:
    if name is None:
        return None
    cleaned = _CONTROL_RE.sub("", re.sub(r"[\r\n\t]+", " ", name)).strip()
    # Never hand out directory parts ("../../x", "C:\\x"): consumers save files by name.
    cleaned = re.split(r"[/\\]", cleaned)[-1].strip()
    return cleaned or None


def _disposition_type(params: _Params) -> str | None:
    value = params.value.strip().lower()
    if value.startswith("attach"):
        return "attachment"
    if value.startswith("inline"):
        return "inline"
    return None


def _strip_brackets(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip().strip("<>").strip()
    return stripped or None


@dataclass(slots=True)
class _Collected:
    blocks: list[_Block] = field(default_factory=list)
    attachments: list[AttachmentInfo] = field(default_factory=list)

    def has_html(self) -> bool:
        return any(block.html is not None for block in self.blocks)

    def html(self) -> str:
        return "\n".join(
            block.html if block.html is not None else _plain_to_html(block.plain or "")
            for block in self.blocks
        )

    def plain(self) -> str | None:
        """Plain text of every block, or None when some block only has HTML."""
        if any(block.plain is None for block in self.blocks):
            return None
        return "\n".join(block.plain or "" for block in self.blocks)


def _is_blank(markup: str) -> bool:
    return not _html_to_text(markup, enough=1).strip() if "<" in markup else not markup.strip()


def _child_path(path: str, number: int) -> str:
    return f"{path}.{number}" if path else str(number)


def _path_key(path: str) -> tuple[int, ...]:
    return tuple(int(number) for number in path.split("."))


def _children(payload: object) -> list[_Part]:
    return (
        [child for child in payload if isinstance(child, Message)]
        if isinstance(payload, list)
        else []
    )


def _payload(part: _Part) -> Any:
    """The part's payload as ``get_payload()`` gives it: its children, or its text.

    ``get_payload()`` decodes 8-bit text with the part's charset label and recovers from an
    unknown label (LookupError) but not from one the codec registry refuses outright (a NUL in
    it raises ValueError): such a label is treated as unknown, as the standard library does.
    """
    try:
        return part.get_payload()
    except ValueError:
        payload = vars(part)["_payload"]
        if isinstance(payload, str):
            return payload.encode("ascii", "surrogateescape").decode("ascii", "replace")
        return payload


def _is_container(part: _Part) -> bool:
    return isinstance(_payload(part), list) and part.get_content_maintype() == "multipart"


class _Walker:
    """Walks the MIME tree, numbering parts as IMAP does and sorting body from attachments.

    Rules: in multipart/alternative the last HTML rendering is the HTML body and the last
    plain one the text; in multipart/related the root (``start`` or the first part) is the
    body and the rest are inline resources; every other multipart shows its parts in
    order. A text/plain or text/html leaf is body text unless it is marked as an
    attachment or carries a file name. ``message/*`` parts are attachments as a whole.
    """

    def __init__(self, ctx: _Context) -> None:
        self._ctx = ctx
        self._infos: dict[int, _PartInfo] = {}

    def info(self, part: _Part) -> _PartInfo:
        cached = self._infos.get(id(part))
        if cached is None:
            cached = _part_info(part, self._ctx)
            self._infos[id(part)] = cached
        return cached

    def visit(
        self,
        part: _Part,
        path: str,
        out: _Collected,
        *,
        in_related: bool = False,
        force_attachment: bool = False,
    ) -> None:
        if _is_container(part):
            self._multipart(part, path, out, in_related or force_attachment, force_attachment)
            return
        info = self.info(part)
        own_path = path or "1"
        if force_attachment or not self._is_body_text(part, info):
            out.attachments.append(self._attachment(part, info, own_path, in_related))
        else:
            out.blocks.append(self._text_block(part, info))

    def _multipart(
        self, part: _Part, path: str, out: _Collected, in_related: bool, force: bool
    ) -> None:
        children = _children(_payload(part))
        pairs = [(child, _child_path(path, n)) for n, child in enumerate(children, start=1)]
        subtype = part.get_content_subtype()
        if force:
            for child, child_path in pairs:
                self.visit(child, child_path, out, in_related=in_related, force_attachment=True)
        elif subtype == "alternative":
            self._alternative(pairs, out)
        elif subtype == "related":
            self._related(part, pairs, out)
        else:
            for child, child_path in pairs:
                self.visit(child, child_path, out, in_related=in_related)

    def _alternative(self, pairs: list[tuple[_Part, str]], out: _Collected) -> None:
        html_pick: _Collected | None = None
        text_pick: _Collected | None = None
        extras: list[AttachmentInfo] = []
        for child, child_path in pairs:
            sub = _Collected()
            self.visit(child, child_path, sub)
            # The last rendering wins (RFC 2046), but an empty one never replaces a real
            # one: broken boundaries often leave an empty part at the end.
            if sub.has_html():
                if html_pick is None or not _is_blank(sub.html()):
                    html_pick = sub
            elif sub.blocks and (text_pick is None or (sub.plain() or "").strip()):
                text_pick = sub
            else:
                extras.extend(
                    a
                    for a in sub.attachments
                    if a.filename or a.content_type in _ALTERNATIVE_KEEP_TYPES
                )
        if html_pick is None and text_pick is None:
            out.attachments.extend(extras)
            return
        plain = text_pick.plain() if text_pick is not None else None
        if plain is None and html_pick is not None:
            plain = html_pick.plain()
        out.blocks.append(
            _Block(plain=plain, html=html_pick.html() if html_pick is not None else None)
        )
        for pick in (text_pick, html_pick):
            if pick is not None:
                out.attachments.extend(pick.attachments)
        out.attachments.extend(extras)

    def _related(self, part: _Part, pairs: list[tuple[_Part, str]], out: _Collected) -> None:
        if not pairs:
            return
        root_index = 0
        start = _strip_brackets(self.info(part).start)
        cids = [self.info(child).content_id for child, _ in pairs]
        if start is not None and start in cids:
            root_index = cids.index(start)
        elif not _is_container(pairs[0][0]) and self.info(pairs[0][0]).content_type != "text/html":
            # MHTML puts resources first and finds the root by Content-Location.
            html_roots = [
                i
                for i, (child, _) in enumerate(pairs)
                if self.info(child).content_type == "text/html"
            ]
            root_index = html_roots[0] if html_roots else 0
        for index, (child, child_path) in enumerate(pairs):
            if index == root_index:
                self.visit(child, child_path, out)
            else:
                self.visit(child, child_path, out, in_related=True, force_attachment=True)

    def _is_body_text(self, part: _Part, info: _PartInfo) -> bool:
        if isinstance(_payload(part), list):
            return False  # message/*: an enclosed message is an attachment
        if part.get_content_maintype() == "multipart":
            return True  # boundary never found: show the raw content as text
        return (
            info.content_type in _BODY_TYPES
            and info.disposition != "attachment"
            and info.filename is None
        )

    def _text_block(self, part: _Part, info: _PartInfo) -> _Block:
        data = _payload_bytes(part, info, self._ctx, for_text=True)
        is_html = info.content_type in _HTML_TYPES
        sniffed = None
        if is_html and _resolve_charset(info.charset) is None:
            meta = _META_CHARSET_RE.search(data[:SNIFF_BYTES])
            sniffed = meta.group(1).decode("ascii") if meta else None
        text = self._ctx.decode_text(data, info.charset, sniffed)
        text = _clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))
        if is_html:
            return _Block(html=text)
        if info.content_type in _MARKUP_PLAIN_TYPES:
            text = _strip_enriched(text)
        return _Block(plain=text)

    def _attachment(
        self, part: _Part, info: _PartInfo, path: str, in_related: bool
    ) -> AttachmentInfo:
        payload = _payload(part)
        elided = self._ctx.elided.get(payload.strip()) if isinstance(payload, str) else None
        size = elided if elided is not None else len(_payload_bytes(part, info, self._ctx))
        disposition = info.disposition
        is_inline = disposition == "inline" or (
            disposition is None and in_related and info.content_id is not None
        )
        return AttachmentInfo(
            filename=info.filename,
            content_type=info.content_type,
            size=size,
            content_id=info.content_id,
            is_inline=is_inline,
            part_path=path,
            content_disposition=disposition,
        )


def _part_info(part: _Part, ctx: _Context) -> _PartInfo:
    raw_type = _first_header(part, "content-type")
    content_type = _parse_params(raw_type, ctx)
    disposition = _parse_params(_first_header(part, "content-disposition"), ctx)
    media = _media_type(content_type, part.get_default_type())
    if part.get_content_maintype() == "multipart" and not isinstance(_payload(part), list):
        media = "text/plain"
    filename = (
        disposition.params.get("filename")
        or content_type.params.get("name")
        or disposition.params.get("name")
        or content_type.params.get("filename")
    )
    if filename and raw_type is not None and not content_type.value.strip():
        media = "application/octet-stream"  # "Content-Type: ; name=x.jpg"
    cte_raw = _first_header(part, "content-transfer-encoding") or ""
    cte = _unfold(cte_raw).split(";", 1)[0].strip().lower()
    raw_cid = _first_header(part, "content-id")
    content_id = _strip_brackets(_decode_header_value(raw_cid, ctx)) if raw_cid else None
    return _PartInfo(
        content_type=media,
        charset=content_type.params.get("charset"),
        cte=cte,
        disposition=_disposition_type(disposition),
        filename=_clean_filename(filename),
        content_id=content_id,
        start=content_type.params.get("start"),
    )


def _serialize_body(part: _Part, ctx: _Context) -> bytes:
    """Bytes of a part's body when the parser turned it into objects (message/*)."""
    buffer = BytesIO()
    try:
        BytesGenerator(buffer, mangle_from_=False, policy=_SERIALIZE_POLICY).flatten(part)
    # The generator has many failure modes on broken input; a size of 0 beats losing mail.
    except Exception:
        ctx.defect("SerializationFailed")
        return b""
    return _split(buffer.getvalue())[1]


def _payload_bytes(part: _Part, info: _PartInfo, ctx: _Context, *, for_text: bool = False) -> bytes:
    """The part's content with the transfer encoding undone (decoded exactly once)."""
    payload = _payload(part)
    if isinstance(payload, list):
        raw = _serialize_body(part, ctx)
        if info.cte == "base64":
            return _b64_lenient(raw)
        return binascii.a2b_qp(raw) if info.cte == "quoted-printable" else raw
    if info.cte == "base64":
        text = payload if isinstance(payload, str) else ""
        if for_text and _NOT_BASE64_RE.search(text[:SNIFF_BYTES]):
            ctx.defect("FalseBase64Text")
            return _raw_payload(part)
        try:
            # A str of ASCII goes straight to C, without an encoded copy of the payload.
            return binascii.a2b_base64(text)
        except (ValueError, binascii.Error):
            ctx.defect("InvalidBase64")
            return _b64_lenient(_raw_payload(part))
    # get_payload(decode=True) undoes quoted-printable and uuencode when the header spells
    # them exactly, and returns the raw bytes otherwise (8-bit bytes intact, unlike
    # get_payload(), which replaces them).
    data = part.get_payload(decode=True)
    data = data if isinstance(data, bytes) else b""
    if info.cte == "quoted-printable" and not _python_decodes(part):
        return binascii.a2b_qp(data)  # e.g. "quoted-printable;" with a stray semicolon
    return data


def _python_decodes(part: _Part) -> bool:
    return str(part.get("content-transfer-encoding", "")).lower() in _PYTHON_DECODED_CTES


def _raw_payload(part: _Part) -> bytes:
    if _python_decodes(part):
        text = _payload(part)
        return _to_bytes(text) if isinstance(text, str) else b""
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _strip_enriched(text: str) -> str:
    return re.sub(r"<[^<>]*>", "", text.replace("<<", "\x00")).replace("\x00", "<")


def _plain_to_html(text: str) -> str:
    return f'<div style="white-space: pre-wrap">{html.escape(text)}</div>'
