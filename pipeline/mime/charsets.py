"""Charsets: every label mail uses, decoded the way mail clients do.

Labels resolve through aliases and superset chains (``gb2312`` reads as ``gb18030``); bytes
decode strictly under the declared chain, then leniently; ISO-2022-JP as Microsoft writes it
and WHATWG's windows-1252 are codecs of their own; statistical detection is the last resort.
``_Context`` carries one message's charset hints, defects and elided attachment sizes.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from charset_normalizer import from_bytes

# Charset detection reads at most this many bytes: enough for a confident guess, and it
# keeps a mislabelled multi-megabyte text part from costing seconds.
DETECT_SAMPLE_BYTES: Final = 64 * 1024
# Below this many non-ASCII bytes statistical detection guesses wrong more often than a
# windows-1252 fallback does (measured on short Cyrillic and CJK strings).
DETECT_MIN_NON_ASCII: Final = 16
# _mostly_utf8 accepts stray bytes only when this many valid characters back each one.
UTF8_GOOD_PER_BAD: Final = 4
# The longest charset label worth looking up; anything longer is garbage.
MAX_CHARSET_LABEL: Final = 40
_SURROGATE_RE: Final = re.compile(r"[\ud800-\udfff]")

# ISO-2022-JP as Microsoft writes it (CP50220): JIS X 0208 plus the NEC and IBM rows
# ("①", "№", "㈱") that Outlook puts in Japanese mail and Python's codecs reject.
_ISO2022JP_MS: Final = "x-iso-2022-jp-ms"
_ISO2022JP_ESCAPE_RE: Final = re.compile(rb"\x1b(\$[@B]|\$\(D|\([BJI])")
# windows-1252 as WHATWG defines it: the five unassigned bytes map to the C1 controls
# (like latin-1), so decoding can never fail and no byte is lost.
_WIN1252: Final = "x-windows-1252-lenient"
_CP1252_TABLE: Final = {
    byte: bytes([byte]).decode("cp1252")
    for byte in range(0x80, 0xA0)
    if byte not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}

# Labels mail uses that Python lacks, plus Microsoft/WHATWG supersets that decode more of
# what is actually sent under the narrower name.
_CHARSET_ALIASES: Final[dict[str, str]] = {
    "unicode-1-1-utf-7": "utf-7",
    "x-unicode-2-0-utf-7": "utf-7",
    "csunicode11utf7": "utf-7",
    "unicode-2-0-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601-1989": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "ksc_5601": "cp949",
    "x-windows-949": "cp949",
    "windows-949": "cp949",
    "euc-kr": "cp949",
    "x-gbk": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "gb_2312-80": "gb18030",
    "csgb2312": "gb18030",
    "euc-cn": "gb18030",
    "x-euc-cn": "gb18030",
    "cp936": "gb18030",
    "windows-936": "gb18030",
    "x-big5": "big5",
    "big5-hkscs": "big5hkscs",
    "x-sjis": "shift_jis",
    "windows-31j": "cp932",
    "x-euc-jp": "euc_jp",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-8-e": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "iso-8859-6-e": "iso-8859-6",
    "windows-874": "cp874",
    "x-windows-874": "cp874",
    "tis-620": "cp874",
    "iso-8859-11": "cp874",
    "x-mac-roman": "mac-roman",
    "macintosh": "mac-roman",
    "x-mac-ce": "mac-latin2",
    "x-mac-ukrainian": "mac-cyrillic",
    "ansi": "cp1252",
    "ansi_x3.4-1968": "ascii",
    "unicode": "utf-16",
    "ucs-2": "utf-16",
    "iso-10646-ucs-2": "utf-16-be",
    "utf8mb4": "utf-8",
}

# Labels that say nothing about the bytes: decode by evidence instead.
_UNKNOWN_LABELS: Final = frozenset(
    {
        "",
        "unknown",
        "unknown-8bit",
        "x-unknown",
        "none",
        "default",
        "charset",
        "x-user-defined",
        "binary",
        "8bit",
        "7bit",
    }
)
# Labels that are valid but deliberately treated as "no information".
_WEAK_LABELS: Final = _UNKNOWN_LABELS | {"us-ascii", "ascii", "ansi_x3.4-1968", "us"}
# Python codecs that are text encodings but never a real mail charset.
_REFUSED_CODECS: Final = frozenset(
    {"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode", "mbcs", "oem"}
)
# Codec chains tried in order (strictly); the first is used with replacement when all fail.
_CODEC_CHAINS: Final[dict[str, tuple[str, ...]]] = {
    "iso8859-1": (_WIN1252,),
    "cp1252": (_WIN1252,),
    "iso8859-9": ("cp1254",),
    "big5": ("cp950", "big5hkscs"),
    "cp950": ("cp950", "big5hkscs"),
    "big5hkscs": ("big5hkscs", "cp950"),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "cp932": ("cp932", "shift_jis_2004"),
    "euc_jp": ("euc_jp", "euc_jis_2004", "cp932"),
    "iso2022_jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", _ISO2022JP_MS),
    "iso2022_jp_1": ("iso2022_jp_1", "iso2022_jp_2", _ISO2022JP_MS),
    "iso2022_jp_2": ("iso2022_jp_2", _ISO2022JP_MS),
    "gb2312": ("gb18030",),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
}
# A label with trailing junk ("utf-8return-path: ...") still names its charset.
_LABEL_PREFIX_RE: Final = re.compile(
    r"(utf-?8|utf-?16(?:-?[bl]e)?|iso-?8859-\d{1,2}|windows-12\d\d|cp12\d\d|koi8-?[ru]"
    r"|gb18030|gbk|gb2312|big5|shift[-_]jis|euc-(?:jp|kr)|iso-2022-jp|us-ascii)"
)
_ISO2022JP_CHAIN: Final = _CODEC_CHAINS["iso2022_jp"]


def _clean_label(label: str) -> str:
    return label.strip().strip("\"'").strip().lower()


def _codec_name(label: str) -> str | None:
    """Python codec name for a cleaned label, None when Python has no text codec for it."""
    try:
        info = codecs.lookup(label)
        b"".decode(info.name)  # raises LookupError for bytes-to-bytes codecs (base64, …)
    except (LookupError, ValueError):
        return None
    return None if info.name in _REFUSED_CODECS else info.name


@functools.lru_cache(maxsize=512)
def _resolve_charset(label: str | None) -> tuple[str, ...] | None:
    """Codec chain for a declared charset label.

    Returns None for labels that carry no information (missing, unknown, "us-ascii"): the
    bytes then decide. US-ASCII counts as no information because mailers label 8-bit
    text us-ascii all the time; a correct label changes nothing for pure ASCII bytes.
    """
    if label is None:
        return None
    cleaned = _clean_label(label)[:MAX_CHARSET_LABEL]
    if cleaned in _UNKNOWN_LABELS:
        return None
    cleaned = _CHARSET_ALIASES.get(cleaned, cleaned)
    name = _codec_name(cleaned)
    if name is None and cleaned.startswith("x-mac-"):
        name = _codec_name("mac-" + cleaned[len("x-mac-") :])
    if name is None and re.fullmatch(r"cp-\d+", cleaned):
        name = _codec_name(cleaned.replace("-", ""))
    if name is None:
        prefix = _LABEL_PREFIX_RE.match(cleaned)
        if prefix is None or prefix.group(0) == cleaned:
            return None
        return _resolve_charset(prefix.group(0))
    if name == "ascii":
        return None
    return _CODEC_CHAINS.get(name, (name,))


def _decode_with(data: bytes, codec: str, errors: str) -> str:
    if codec == _WIN1252:
        return data.decode("latin-1").translate(_CP1252_TABLE)
    if codec == _ISO2022JP_MS:
        return _decode_iso2022jp_ms(data, errors)
    return data.decode(codec, errors)


def _decode_iso2022jp_ms(data: bytes, errors: str) -> str:
    """Decode ISO-2022-JP by mapping its JIS X 0208 runs to Shift_JIS and using cp932."""
    out: list[str] = []
    mode = b"(B"
    position = 0
    for match in [*_ISO2022JP_ESCAPE_RE.finditer(data), None]:
        end = match.start() if match else len(data)
        run = data[position:end]
        if mode in (b"$@", b"$B", b"$(D"):
            out.append(_jis_to_sjis(run).decode("cp932", errors))
        elif mode == b"(I":  # JIS X 0201 katakana: 0x21-0x5F shift to 0xA1-0xDF
            out.append(
                bytes(b | 0x80 if 0x21 <= b <= 0x5F else b for b in run).decode("cp932", errors)
            )
        else:
            out.append(run.decode("ascii", errors))
        if match:
            mode, position = match.group(1), match.end()
    return "".join(out)


def _jis_to_sjis(run: bytes) -> bytes:
    converted = bytearray()
    for index in range(0, len(run) - 1, 2):
        first, second = run[index], run[index + 1]
        if first & 1:
            second += 0x1F + (1 if second >= 0x60 else 0)
        else:
            second += 0x7E
        lead = (first + 1) // 2 + 0x70
        converted += bytes((lead + 0x40 if lead >= 0xA0 else lead, second & 0xFF))
    if len(run) % 2:
        converted.append(run[-1])  # a dangling byte: let cp932 flag it
    return bytes(converted)


def _decode_strict(data: bytes, chain: Sequence[str]) -> str | None:
    for codec in chain:
        try:
            return _decode_with(data, codec, "strict")
        except UnicodeDecodeError:
            continue
    return None


def _decode_declared(data: bytes, chain: Sequence[str]) -> str:
    text = _decode_strict(data, chain)
    return text if text is not None else _decode_with(data, chain[0], "replace")


def _decode_utf8_lenient(data: bytes) -> str:
    """UTF-8 where valid, windows-1252 for the bytes that are not; never fails."""
    return _SURROGATE_RE.sub(
        lambda m: _decode_with(bytes([ord(m.group()) - 0xDC00]), _WIN1252, "strict"),
        data.decode("utf-8", "surrogateescape"),
    )


def _mostly_utf8(data: bytes) -> str | None:
    """Decode UTF-8 with a few stray bytes (a name cut mid-character, one latin-1 byte).

    Legacy multi-byte text (EUC-KR, GBK…) also contains valid UTF-8 sequences by chance,
    so this only answers when valid multi-byte characters clearly outnumber bad bytes.
    """
    text = data.decode("utf-8", "surrogateescape")
    bad = len(_SURROGATE_RE.findall(text))
    good = sum(1 for char in text if 0x7F < ord(char) < 0xD800 or ord(char) > 0xDFFF)
    if bad * UTF8_GOOD_PER_BAD > good:
        return None
    return _decode_utf8_lenient(data)


def _non_ascii_count(data: bytes) -> int:
    return len(data.translate(None, bytes(range(0x80))))


@dataclass(slots=True)
class _Context:
    """Per-message state: charset hints gathered from the message, and defects."""

    hints: list[tuple[str, ...]] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # placeholder body -> decoded size, for attachment bodies elided before parsing
    elided: dict[str, int] = field(default_factory=dict)

    def add_hint(self, chain: tuple[str, ...] | None) -> None:
        if chain is not None and chain not in self.hints:
            self.hints.append(chain)

    def defect(self, name: str) -> None:
        if name not in self.defects:
            self.defects.append(name)

    def decode_8bit(self, data: bytes) -> str:
        """Decode bytes with no trustworthy label (raw header bytes, unknown charsets).

        UTF-8 first (it fails loudly when wrong), also with a few stray bytes, then the
        charsets the message declares elsewhere (a mailer that writes raw 8-bit headers
        uses its body charset), then windows-1252, which accepts every byte: text is
        never dropped.
        """
        if data.isascii():
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return mostly
        for chain in self.hints:
            decoded = _decode_strict(data, chain)
            if decoded is not None:
                return decoded
        self.defect("UndeclaredCharsetFallback")
        return _decode_with(data, _WIN1252, "strict")

    def decode_text(self, data: bytes, label: str | None, sniffed: str | None = None) -> str:
        """Decode a body part: declared label, else evidence, else detection."""
        chain = _resolve_charset(label)
        if chain is None and label is not None and _clean_label(label) not in _WEAK_LABELS:
            self.defect("UnknownCharset")
        if chain is not None:
            return self._decode_labelled(data, chain)
        if data.isascii():
            # A 7-bit ISO-2022-JP body often comes without any charset label.
            if b"\x1b$" in data:
                text = _decode_strict(data, _ISO2022JP_CHAIN)
                if text is not None:
                    return text
            return data.decode("ascii")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        mostly = _mostly_utf8(data)
        if mostly is not None:
            return mostly
        sniffed_chain = _resolve_charset(sniffed)
        for candidate in ([sniffed_chain] if sniffed_chain else []) + self.hints:
            text = _decode_strict(data, candidate)
            if text is not None:
                return text
        if _non_ascii_count(data[:DETECT_SAMPLE_BYTES]) >= DETECT_MIN_NON_ASCII:
            best = from_bytes(data[:DETECT_SAMPLE_BYTES]).best()
            detected = _resolve_charset(best.encoding) if best is not None else None
            if detected is not None:
                self.defect("CharsetDetected")
                return _decode_declared(data, detected)
        self.defect("UndeclaredCharsetFallback")
        return _decode_with(data, _WIN1252, "strict")

    def _decode_labelled(self, data: bytes, chain: tuple[str, ...]) -> str:
        if data.isascii() and _ascii_compatible(chain[0]):
            return data.decode("ascii")
        text = _decode_strict(data, chain)
        if text is not None:
            return text
        if chain[0] == "utf-8":
            # Mostly windows-1252 text in a part labelled UTF-8 (old Outlook and Windows
            # Live do this): keep every character rather than replace them.
            self.defect("UndecodableText")
            return _decode_utf8_lenient(data)
        try:
            # The label is wrong. UTF-8 is the usual truth and cannot match by chance.
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.defect("UndecodableText")
            return _decode_with(data, chain[0], "replace")
        self.defect("MislabelledCharset")
        return text


@functools.lru_cache(maxsize=64)
def _ascii_compatible(codec: str) -> bool:
    """Whether pure ASCII bytes decode to themselves (false for ISO-2022-*, UTF-7, UTF-16)."""
    if codec == _WIN1252:
        return True
    if codec.startswith(("iso2022", "utf_7", "utf-7", "hz", "x-iso-2022")):
        return False  # 7-bit encodings whose escape sequences are ASCII bytes
    try:
        return "Aa0-".encode(codec) == b"Aa0-"
    except (LookupError, UnicodeError):
        return False
