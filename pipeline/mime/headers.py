"""Headers: RFC 2047 encoded-words, parameters (RFC 2231), addresses and dates.

Each is lenient (encoded-words with stray spaces, raw 8-bit bytes, hidden parameters) and
linear in time on hostile input (long runs of separators, spaces or comments).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import getaddresses, parsedate_tz
from typing import Final

from pipeline.mime.charsets import (
    _SURROGATE_RE,
    _Context,
    _decode_declared,
    _decode_strict,
    _decode_with,
    _resolve_charset,
)
from pipeline.mime.values import Participant

# Lenient encoded-word: tolerates spaces around the encoding letter and inside the text,
# and an RFC 2231 language suffix on the charset ("utf-8*en").
_ENCODED_WORD_RE: Final = re.compile(r"=\?([^?\s]*)\?\s*([bBqQ])\s*\?([^?]*)\?=")
_Q_ESCAPE_RE: Final = re.compile(rb"=([0-9A-Fa-f]{2})")
_LINE_BREAKS_RE: Final = re.compile(r"[\r\n]+")
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _to_bytes(value: str) -> bytes:
    # compat32 keeps undecodable bytes as surrogate escapes; this restores them exactly.
    return value.encode("utf-8", "surrogateescape")


def _unfold(value: str) -> str:
    return _LINE_BREAKS_RE.sub("", value).replace("\t", " ")


def _q_decode(text: str) -> bytes:
    data = _to_bytes(text).replace(b"_", b" ")
    return _Q_ESCAPE_RE.sub(lambda m: bytes([int(m.group(1), 16)]), data)


def _b64_lenient(data: bytes) -> bytes:
    """Base64 decode that never raises: bad characters are skipped, padding repaired."""
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    remainder = len(cleaned) % 4
    if remainder == 1:
        cleaned = cleaned[:-1]  # a lone trailing sextet carries no complete byte
    elif remainder:
        cleaned += b"=" * (4 - remainder)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return b""


def _decode_words(value: str, ctx: _Context) -> str:
    """Decode RFC 2047 encoded-words and raw 8-bit bytes of one unfolded header value."""
    # (charset or None for literal text, byte pieces): the pieces of adjacent words are joined
    # once at the end, so a subject of a million encoded-words costs linear time.
    tokens: list[tuple[str | None, list[bytes]]] = []
    position = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        literal = value[position : match.start()]
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if literal and not (literal.isspace() and tokens and tokens[-1][0] is not None):
            tokens.append((None, [_to_bytes(literal)]))
        charset = match.group(1).split("*", 1)[0]
        encoded = match.group(3)
        if match.group(2) in "bB":
            raw = _b64_lenient(_to_bytes("".join(encoded.split())))
        else:
            raw = _q_decode(encoded)
        # Adjacent words in one charset are joined before decoding: encoders split
        # multi-byte characters across words.
        last = tokens[-1][0] if tokens else None
        if last is not None and last.lower() == charset.lower():
            tokens[-1][1].append(raw)
        else:
            tokens.append((charset, [raw]))
        position = match.end()
    if not tokens:
        return ctx.decode_8bit(_to_bytes(value))
    tail = value[position:]
    if tail:
        tokens.append((None, [_to_bytes(tail)]))
    out: list[str] = []
    for charset, pieces in tokens:
        raw = b"".join(pieces)
        if charset is None:
            out.append(ctx.decode_8bit(raw))
            continue
        chain = _resolve_charset(charset)
        if chain is None:
            out.append(ctx.decode_8bit(raw))
        else:
            text = _decode_strict(raw, chain)
            if text is None:
                ctx.defect("UndecodableText")
                text = _decode_with(raw, chain[0], "replace")
            out.append(text)
    return "".join(out)


def _decode_header_value(value: str, ctx: _Context) -> str:
    if value.isascii() and "=?" not in value:
        # Most values: nothing to decode, only unfold and drop control characters (the same
        # result as the general path below, without its passes).
        return _CONTROL_RE.sub("", _unfold(value)).strip()
    text = _decode_words(_unfold(value), ctx)
    # Double-encoded headers exist in the wild (an encoded-word whose text is itself
    # encoded-words); one more pass recovers them.
    if _ENCODED_WORD_RE.search(text):
        text = _decode_words(text, ctx)
    # Encoded-words can smuggle line breaks and control bytes into a one-line value.
    text = _CONTROL_RE.sub("", text.replace("\r", " ").replace("\n", " ").replace("\t", " "))
    return _clean_text(text).strip()


def _clean_text(text: str) -> str:
    # Postgres text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in text:
        text = text.replace("\x00", "")
    return _SURROGATE_RE.sub("\ufffd", text)


def decode_header(value: str | bytes) -> str:
    """Decode one header value for display: unfold, RFC 2047, raw 8-bit bytes.

    Args:
        value: The raw value, as bytes or as a str (surrogate escapes allowed).

    Returns:
        The decoded, unfolded, stripped text; undecodable bytes are replaced, never dropped.
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    return _decode_header_value(text, _Context())


@dataclass(frozen=True, slots=True)
class _Params:
    """A parsed structured header such as Content-Type or Content-Disposition."""

    value: str
    params: dict[str, str]


_ATOM_CHARS: Final = r"A-Za-z0-9!#$%&'*+.^_`{|}~-"
_MEDIA_TYPE_RE: Final = re.compile(rf"\s*([{_ATOM_CHARS}]+)\s*/\s*([{_ATOM_CHARS}]+)")
# Only from the start of a whitespace run: from every position inside a long run, the search
# would rescan the run (quadratic time in a header of spaces).
_HIDDEN_PARAM_RE: Final = re.compile(rf"(?<!\s)\s+([{_ATOM_CHARS}]+)\s*=")
_RFC2231_NAME_RE: Final = re.compile(r"([^*]+)\*(\d+)?(\*)?")
_PERCENT_RE: Final = re.compile(rb"%([0-9A-Fa-f]{2})")


def _tokenize_params(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``value; a=b; c="d"`` leniently into the main value and raw parameters."""
    head, _, rest = text.partition(";")
    head = head.strip()
    # "application/pdf name=x.pdf": the ";" is missing, the parameter is in the head.
    hidden = _HIDDEN_PARAM_RE.search(head)
    if hidden:
        rest = head[hidden.start() :] + ";" + rest
        head = head[: hidden.start()]
    params: list[tuple[str, str]] = []
    position, length = 0, len(rest)
    # The next "=" and ";" are looked for again only once passed: a header of a million ";"
    # before its one "=" would otherwise be rescanned for every ";" (quadratic time).
    equals = semicolon = -1
    while position < length:
        while position < length and (rest[position].isspace() or rest[position] == ";"):
            position += 1
        if equals < position:
            equals = rest.find("=", position)
            if equals < 0:
                break  # no parameter can follow
        if semicolon < position:
            semicolon = rest.find(";", position)
            semicolon = length if semicolon < 0 else semicolon
        if semicolon < equals:
            position = semicolon + 1
            continue
        name_part = rest[position:equals].split()
        position = equals + 1
        while position < length and rest[position] in " \t":
            position += 1
        if position < length and rest[position] == '"':
            chars: list[str] = []
            position += 1
            while position < length and rest[position] != '"':
                if rest[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(rest[position])
                position += 1
            position += 1  # closing quote (an unterminated string runs to the end)
            raw_value = "".join(chars)
        else:
            end = rest.find(";", position)
            end = length if end < 0 else end
            raw_value = rest[position:end]
            # An unquoted value ends at whitespace followed by "name=": some mailers
            # forget the ";" between RFC 2231 continuations.
            hidden = _HIDDEN_PARAM_RE.search(raw_value)
            if hidden:
                end = position + hidden.start()
                raw_value = raw_value[: hidden.start()]
            raw_value = raw_value.strip()
            position = end
        if name_part:
            params.append((name_part[-1].lower(), raw_value))
    return head, params


def _parse_params(raw: str | None, ctx: _Context) -> _Params:
    """Parse a structured header, decoding RFC 2231 and (non-standard) RFC 2047 values."""
    if raw is None:
        return _Params("", {})
    head, raw_params = _tokenize_params(_unfold(raw))
    simple: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[bool, str]]] = {}
    for name, value in raw_params:
        match = _RFC2231_NAME_RE.fullmatch(name)
        if match is None:
            simple.setdefault(name, value)  # first occurrence wins on duplicates
            continue
        base, number, star = match.groups()
        # "name*" is section 0 extended; "name*N" plain; "name*N*" extended.
        section = int(number) if number is not None else 0
        is_extended = star is not None or number is None
        extended.setdefault(base, {}).setdefault(section, (is_extended, value))
    params = {name: _decode_header_value(value, ctx) for name, value in simple.items()}
    for base, sections in extended.items():
        params[base] = _join_rfc2231(sections, ctx)
    return _Params(head.strip(), params)


def _join_rfc2231(sections: dict[int, tuple[bool, str]], ctx: _Context) -> str:
    charset: str | None = None
    chunks: list[bytes] = []
    for index, number in enumerate(sorted(sections)):
        is_extended, value = sections[number]
        if index == 0 and is_extended and value.count("'") >= 2:
            charset, _, value = value.split("'", 2)
        data = _to_bytes(value)
        if is_extended:
            data = _PERCENT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), data)
        chunks.append(data)
    joined = b"".join(chunks)
    chain = _resolve_charset(charset)
    text = _decode_declared(joined, chain) if chain else ctx.decode_8bit(joined)
    return _decode_header_value(text, ctx)


def _media_type(params: _Params, default: str) -> str:
    match = _MEDIA_TYPE_RE.match(params.value)
    if match:
        media = f"{match.group(1)}/{match.group(2)}".lower()
        return "text/plain" if media == "plain/text" else media  # a known mailer mistake
    token = params.value.strip().lower()
    if not token:
        return default
    # No subtype ("application-x-gzip"): keep it out of the text body unless it says text.
    return "text/plain" if token.startswith("text") else "application/octet-stream"


def _addresses(values: Sequence[str], ctx: _Context) -> tuple[Participant, ...]:
    """Participants of one address field (all occurrences of it)."""
    # 8-bit bytes are decoded first so the address parser sees characters; encoded-words
    # stay encoded until after splitting, since a decoded name may contain a comma.
    words: list[str] = []

    def protect(match: re.Match[str]) -> str:
        # Encoded-words may contain specials (":", ")", ",") that would derail the
        # address parser; park them behind private-use placeholders until after it.
        words.append(match.group(0))
        return f"\ue000{len(words) - 1}\ue001"

    texts = []
    budget = MAX_ADDRESS_FIELD_CHARS
    for value in values:
        if len(value) > budget:
            # the list is read up to its last complete element within the budget
            cut = value.rfind(",", 0, budget)
            value = value[: max(cut, 0)]
            ctx.defect("AddressListTruncated")
            budget = 0
        else:
            budget -= len(value)
        text = _clean_text(ctx.decode_8bit(_to_bytes(_unfold(value))))
        text = _ENCODED_WORD_RE.sub(protect, text)
        texts.append(_NAME_BEFORE_ADDRESS_RE.sub(_quote_name_with_at, text))
    participants: list[Participant] = []
    for name, address in _getaddresses(texts):
        name = _PLACEHOLDER_RE.sub(lambda m: words[int(m.group(1))], name)
        decoded_name = _decode_header_value(name, ctx) if name else ""
        email = _PLACEHOLDER_RE.sub(lambda m: words[int(m.group(1))], address).strip()
        if "@" not in email and _ENCODED_WORD_RE.search(email):
            # A phrase without an address ("To: =?utf-8?q?Team?="): it is a name.
            decoded_name, email = _decode_header_value(email, ctx), ""
        if decoded_name or email:
            participants.append(Participant(name=decoded_name, email=email))
    return tuple(participants)


# Characters of one address field (all its occurrences) read for participants: some 10,000
# recipients. The standard address parser reads a character at a time (about 0.6 MB/s), so a
# To: of megabytes would cost seconds of CPU per message; the whole value stays in ``headers``.
MAX_ADDRESS_FIELD_CHARS: Final = 256 * 1024
_PLACEHOLDER_RE: Final = re.compile("\ue000(\\d+)\ue001")
# What precedes an angle address in a list element. One greedy run with nothing after it that
# it could also match: a header of "a@a@a@…" without "<" is read in linear time.
_NAME_BEFORE_ADDRESS_RE: Final = re.compile(r'(^|,)([^,<>"]*)(<[^<>]*>)')


def _quote_name_with_at(match: re.Match[str]) -> str:
    """An unquoted display name containing "@" ("Mikel@Lindsaar <m@x>") reads as two
    addresses to a strict parser; quote it."""
    lead, name, address = match.groups()
    body = name.rstrip()
    first = body.lstrip()[:1]
    if not first or first == "@" or "@" not in body:
        return match.group(0)
    return f'{lead}"{body}"{name[len(body) :]}{address}'


_ADDR_ATOM: Final = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"  # RFC 5322 atext
_SIMPLE_ADDR: Final = rf"[{_ADDR_ATOM}]+(?:\.[{_ADDR_ATOM}]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# Exactly one way to match any text (the name takes the spaces around it, stripped later):
# nested or adjacent whitespace quantifiers made a long run of spaces cost quadratic time.
_SIMPLE_MAILBOX_RE: Final = re.compile(
    rf"(?:([A-Za-z0-9'_ \t-]*)<({_SIMPLE_ADDR})>|[ \t]*({_SIMPLE_ADDR}))[ \t]*"
)
_NOT_SIMPLE_RE: Final = re.compile(r'[^\x20-\x7e\t]|["()\\:;\[\]]|=\?')


def _simple_pairs(texts: list[str]) -> list[tuple[str, str]] | None:
    """``getaddresses`` for the common lists (``Name <a@b>``, ``a@b``, separated by commas),
    without its character-by-character tokenizer; None for anything else."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        if _NOT_SIMPLE_RE.search(text):
            return None
        for piece in text.split(","):
            match = _SIMPLE_MAILBOX_RE.fullmatch(piece)
            if match is None:
                return None
            name, routed, bare = match.groups()
            pairs.append((" ".join(name.split()), routed) if routed else ("", bare))
    return pairs


def _getaddresses(texts: list[str]) -> list[tuple[str, str]]:
    simple = _simple_pairs(texts)
    if simple is not None:
        return simple
    try:
        try:
            return getaddresses(texts, strict=False)
        except TypeError:  # Pythons before 3.11.10 have no strict parameter
            return getaddresses(texts)
    except RecursionError:
        # email._parseaddr recurses once per list element; thousands of them (a 100 KB
        # header) exhaust the stack. Split at top-level commas and parse piece by piece.
        pairs: list[tuple[str, str]] = []
        for text in texts:
            for piece in _split_address_list(text):
                try:
                    pairs.extend(getaddresses([piece]))
                except RecursionError:
                    pairs.append((piece.strip(), ""))
        return pairs


def _split_address_list(text: str) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    angle = 0
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "<":
            angle += 1
        elif not quoted and char == ">":
            angle = max(0, angle - 1)
        elif char == "," and not quoted and not angle:
            pieces.append("".join(current))
            current = []
            continue
        current.append(char)
    pieces.append("".join(current))
    return [piece for piece in pieces if piece.strip()]


_DATE_COMMENT_RE: Final = re.compile(r"\([^()]*\)")
_DATE_COLON_RE: Final = re.compile(r" ?: ?")
# A Date value longer than this is no date (RFC 5322 dates are about 31 characters; with
# comments and folding, still far below): it is not read, and the message is kept undated.
MAX_DATE_CHARS: Final = 1000


def _parse_date(value: str) -> datetime | None:
    if len(value) > MAX_DATE_CHARS:
        return None
    # RFC 5322 allows comments anywhere and spaces around the colons ("09(c):  55 : 06").
    # Comments go first: "00:19:00 (EDT) -0400" would read "(EDT)" as an unknown zone, i.e.
    # UTC, and ignore the real offset after it.
    text = _DATE_COLON_RE.sub(":", " ".join(_DATE_COMMENT_RE.sub(" ", value).split()))
    parsed = parsedate_tz(text)
    if parsed is not None:
        try:
            naive = datetime(*parsed[:6])  # naive on purpose: the offset is applied below
        except (ValueError, OverflowError):
            return None
        offset = parsed[9] or 0
        try:
            return (naive.replace(tzinfo=UTC) - timedelta(seconds=offset)).astimezone(UTC)
        except OverflowError:
            return None
    try:
        iso = datetime.fromisoformat(value.strip())
        return (iso if iso.tzinfo else iso.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):  # e.g. year 1 with a positive offset
        return None
