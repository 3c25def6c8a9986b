"""Clean messages: a message's own words, without quoted history, signature and markup noise
(``PUT /v3/grants/{grant_id}/messages/clean``, Nylas' "Clean Conversation").

Nylas cleans with machine learning; this is deterministic. A body goes through three steps::

    body ──> lines ──────────────────────────────> rules ──────────────> conversation
     HTML:   parsed (html.parser) into a tree;       drop ">" lines and      HTML (<p>, <br>,
             <script>/<style>, quotes (blockquote,   "On … wrote:"; cut at   <b>, <a>, <img>,
             gmail_quote, yahoo_quoted, moz-cite,    "-- ", Outlook's        <table>) or
             Outlook's appendonsend and all after)   original-message        Markdown; plain
             and signature blocks removed; the rest  header; drop "Sent      text stays plain
             rendered as lines (text + markup)       from my …"; the
     plain:  its lines                               closing ("Best, …")

When removing quoted history would leave nothing (a message that is only a forward, or a quote
box), the quotes are kept. Only the first :data:`CLEAN_SCAN_CHARS` of a body are read, and of
HTML only its first :data:`~pipeline.messages.htmllines.MAX_ELEMENTS` tags
(:mod:`pipeline.messages.htmllines` makes the lines of an HTML body).
"""

from __future__ import annotations

import re
from typing import Final

from pipeline.messages.htmllines import CleanOptions, Line, html_lines

__all__ = ["CLEAN_SCAN_CHARS", "CleanOptions", "clean_body", "looks_like_html"]

CLEAN_SCAN_CHARS: Final = 256 * 1024  # a conversation is at a body's start
# A closing's name block: at most this many lines after the phrase, each this short
CLOSING_TAIL_LINES: Final = 4
CLOSING_TAIL_CHARS: Final = 60

_HTML_RE: Final = re.compile(
    r"<(?:!doctype|html|head|body|div|p|br|span|table|tr|td|a|img|font|b|i|strong|em|"
    r"blockquote|ul|ol|li|h[1-6]|pre|meta|style|center)(?:\s[^>]*)?/?>",
    re.IGNORECASE,
)


def looks_like_html(body: str) -> bool:
    """Whether a stored body is HTML (the stored body is the HTML part when there is one, else
    the plain text)."""
    return _HTML_RE.search(body[:CLEAN_SCAN_CHARS]) is not None


def clean_body(body: str, options: CleanOptions | None = None) -> str:
    """The cleaned conversation of a message body: HTML (or Markdown with
    ``html_as_markdown``) for an HTML body, plain text for a plain one."""
    options = options or CleanOptions()
    body = body[:CLEAN_SCAN_CHARS]
    is_html = looks_like_html(body)
    for drop_quotes in (True, False):
        lines = html_lines(body, options, drop_quotes) if is_html else _plain_lines(body)
        kept = _apply_rules(lines, options, drop_quotes=drop_quotes)
        if any(line.text.strip() for line in kept):
            break
    if not is_html:
        return "\n".join(line.text for line in kept)
    return _markdown(kept) if options.html_as_markdown else _html(kept)


def _plain_lines(body: str) -> list[Line]:
    return [Line(line.rstrip(), line.rstrip()) for line in body.splitlines()]


# --- rules on lines -----------------------------------------------------------------------------

_QUOTED_RE: Final = re.compile(r"^\s*>")
_ATTRIBUTION_RE: Final = re.compile(
    r"^\s*(?:(?:On|Le|Am|El|Il|Op|Em)\s.{0,300}\s"
    r"(?:wrote|writes|a écrit|schrieb|escribió|ha scritto|schreef|escreveu)\b.{0,80}"
    r"|[^\s:].{0,120}\s(?:wrote|writes))\s*:\s*$",
    re.IGNORECASE | re.DOTALL,
)
_ATTRIBUTION_START_RE: Final = re.compile(r"^\s*(?:On|Le|Am|El|Il|Op|Em)\s", re.IGNORECASE)
_ORIGINAL_RE: Final = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|"
    r"Mensaje original|Messaggio originale|Oorspronkelijk bericht)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_RE: Final = re.compile(
    r"^\s*-*\s*(?:Forwarded message|Begin forwarded message|Weitergeleitete Nachricht|"
    r"Message transféré|Mensaje reenviado|Messaggio inoltrato|Doorgestuurd bericht)\s*:?\s*-*\s*$",
    re.IGNORECASE,
)
_HEADER_FROM_RE: Final = re.compile(r"^\s*\**(?:From|De|Von|Van|Da|Från)\s*:\**\s*\S", re.I)
_HEADER_SENT_RE: Final = re.compile(
    r"^\s*\**(?:Sent|Date|Envoyé|Gesendet|Enviado|Datum|Inviato|Verzonden|Skickat)\s*:", re.I
)
_HEADER_TO_RE: Final = re.compile(
    r"^\s*\**(?:To|Subject|À|Objet|An|Betreff|Para|Asunto|Aan|Onderwerp|A|Oggetto)\s*:", re.I
)
_SIGNATURE_RE: Final = re.compile(r"^--\s*$")
_SEPARATOR_RE: Final = re.compile(r"^[\s_\-=*~]*$")
_MOBILE_RE: Final = re.compile(
    r"^\s*(?:Sent from (?:my |Mail for |Outlook|Yahoo Mail|Gmail|AOL)[^\n]{0,60}"
    r"|Get Outlook for [^\n]{1,40}|Sent via [^\n]{1,60}|Envoyé de mon [^\n]{1,40}"
    r"|Von meinem [^\n]{1,40} gesendet|Enviado desde mi [^\n]{1,40})\s*$",
    re.IGNORECASE,
)
_CLOSING_RE: Final = re.compile(
    r"^\s*(?:(?:best|kind|warm|warmest|many|with kind) regards|best(?: wishes)?|regards"
    r"|many thanks|thanks(?: again| so much| a lot| in advance)?|thank you(?: so much| very much"
    r"| again)?|cheers|sincerely(?: yours)?|yours(?: truly| sincerely| faithfully)?"
    r"|all the best|take care|talk soon|with thanks|cordialement|bien à vous"
    r"|mit freundlichen grüßen|(?:viele|liebe|beste) grüße|saludos(?: cordiales)?|un saludo"
    r"|atentamente|cordiali saluti|(?:met )?vriendelijke groet(?:en)?|groeten)"
    r"\s*[,.!]*\s*(?:[,\-\u2013\u2014]\s*[^\W\d_][\w.' -]{0,40})?$",
    re.IGNORECASE,
)


def _apply_rules(lines: list[Line], options: CleanOptions, *, drop_quotes: bool) -> list[Line]:
    if drop_quotes:
        lines = _drop_quoted(lines)
    lines = _cut_at(lines, _signature_start(lines))
    lines = [line for line in lines if not _MOBILE_RE.match(line.text)]
    if options.remove_conclusion_phrases:
        lines = _cut_at(lines, _closing_start(lines))
    return _tidy(lines)


def _drop_quoted(lines: list[Line]) -> list[Line]:
    """Without ``>`` lines and attributions, cut at an original-message header."""
    kept: list[Line] = []
    skip = 0
    forwarded = False  # a forward's header is its content, not history
    for i, line in enumerate(lines):
        if skip:
            skip -= 1
            continue
        if _QUOTED_RE.match(line.text):
            continue
        forwarded = forwarded or bool(_FORWARD_RE.match(line.text))
        if _ORIGINAL_RE.match(line.text) or (not forwarded and _is_header_block(lines, i)):
            break
        span = _attribution_span(lines, i)
        if span:
            skip = span - 1
            continue
        kept.append(line)
    return kept


def _attribution_span(lines: list[Line], i: int) -> int:
    """How many lines the attribution at ``i`` takes ("On …, X wrote:", wrapped over up to
    three lines by plain-text mailers), 0 if there is none."""
    if _ATTRIBUTION_RE.match(lines[i].text):
        return 1
    if not _ATTRIBUTION_START_RE.match(lines[i].text):
        return 0
    for span in (2, 3):
        if i + span <= len(lines) and _ATTRIBUTION_RE.match(
            " ".join(line.text for line in lines[i : i + span])
        ):
            return span
    return 0


def _is_header_block(lines: list[Line], i: int) -> bool:
    """Outlook's header of the message replied to: From:, then Sent: and To:/Subject:."""
    if not _HEADER_FROM_RE.match(lines[i].text):
        return False
    after = [line.text for line in lines[i + 1 : i + 6]]
    return any(_HEADER_SENT_RE.match(t) for t in after) and any(
        _HEADER_TO_RE.match(t) for t in after
    )


def _signature_start(lines: list[Line]) -> int | None:
    for i, line in enumerate(lines):
        if _SIGNATURE_RE.match(line.text) and any(x.text.strip() for x in lines[:i]):
            return i
    return None


def _closing_start(lines: list[Line]) -> int | None:
    """The last closing phrase ("Best,", "Thanks, Ann") followed by nothing but a short name
    block, with words before it."""
    tail = 0
    for i in range(len(lines) - 1, -1, -1):
        text = lines[i].text.strip()
        if not text:
            continue
        if _CLOSING_RE.match(text):
            return i if any(x.text.strip() for x in lines[:i]) else None
        tail += 1
        if tail > CLOSING_TAIL_LINES or len(text) > CLOSING_TAIL_CHARS:
            return None
    return None


def _cut_at(lines: list[Line], index: int | None) -> list[Line]:
    return lines if index is None else lines[:index]


def _tidy(lines: list[Line]) -> list[Line]:
    """Runs of blank lines as one; no blank or separator lines at either end."""
    tidy: list[Line] = []
    for line in lines:
        if not line.blank:
            tidy.append(line)
        elif tidy and not tidy[-1].blank:
            tidy.append(Line("", ""))
    while tidy and not tidy[-1].cells and _SEPARATOR_RE.match(tidy[-1].text):
        if tidy[-1].markup and not tidy[-1].text:  # an image alone on its line
            break
        tidy.pop()
    while tidy and tidy[0].blank:
        tidy.pop(0)
    return tidy


# --- output -------------------------------------------------------------------------------------


def _paragraphs(lines: list[Line]) -> list[list[Line]]:
    groups: list[list[Line]] = [[]]
    for line in lines:
        if line.blank:
            groups.append([])
        else:
            groups[-1].append(line)
    return [g for g in groups if g]


def _html(lines: list[Line]) -> str:
    out: list[str] = []
    for group in _paragraphs(lines):
        text: list[str] = []
        rows: list[str] = []
        for line in [*group, Line("", "")]:
            if line.cells:
                if text:
                    out.append("<p>" + "<br>".join(text) + "</p>")
                    text = []
                rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in line.cells) + "</tr>")
                continue
            if rows:
                out.append("<table>" + "".join(rows) + "</table>")
                rows = []
            if line.markup:
                text.append(line.markup)
        if text:
            out.append("<p>" + "<br>".join(text) + "</p>")
    return "\n".join(out)


def _markdown(lines: list[Line]) -> str:
    out: list[str] = []
    for group in _paragraphs(lines):
        block: list[str] = []
        previous_row = False
        for line in group:
            if line.cells:
                cells = [c.replace("|", "\\|") for c in line.cells]
                if not previous_row and block:
                    block.append("")  # a table starts a block of its own
                block.append("| " + " | ".join(cells) + " |")
                if not previous_row:
                    block.append("|" + " --- |" * len(cells))
            else:
                block.append(line.markup)
            previous_row = bool(line.cells)
        out.append("\n".join(block))
    return "\n\n".join(out)
