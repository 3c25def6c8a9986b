"""Tests for pipeline.mime: the corpus of real-world mail, then targeted behaviour."""

# The expected values are real text in many scripts; "ambiguous" characters are the point.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.errors import MessageParseError
from pipeline.mime import (
    AttachmentInfo,
    ParsedMessage,
    Participant,
    decode_header,
    extract_part,
    header_hash_from_headers,
    identity_headers_hash,
    identity_key_from_headers,
    normalize_subject,
    parse_message,
    split_header_block,
)
from tests.support.corpus import CORPUS, CORPUS_SIZE

# Not RFC 5322 at all: an Outlook .msg (OLE2 compound file) saved with an .eml name.
NOT_A_MESSAGE = frozenset({"spamscope-mail-parser/mail_outlook_1.eml"})
SECTION_RE = re.compile(r"[1-9][0-9]*(\.[1-9][0-9]*)*")
KEY_RE = re.compile(r"[ms]:[0-9a-f]{64}")


def _corpus_files() -> list[Path]:
    files = sorted(CORPUS.rglob("*.eml"))
    # A missing corpus must fail the run, not silently parametrize nothing.
    return files or [CORPUS / "corpus-is-missing.eml"]


def _corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def _parse(name: str) -> ParsedMessage:
    return parse_message(_corpus(name))


def _message(*lines: str, body: str = "") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def _texts(message: ParsedMessage) -> list[str]:
    texts = [message.subject, message.body, message.snippet]
    texts += [value for header in message.headers for value in header]
    for participants in (message.from_, message.to, message.cc, message.bcc, message.reply_to):
        texts += [text for p in participants for text in (p.name, p.email)]
    texts += [a.filename for a in message.attachments if a.filename]
    return texts


# --------------------------------------------------------------------------------------
# The whole corpus
# --------------------------------------------------------------------------------------


def test_corpus_is_complete() -> None:
    assert CORPUS.is_dir(), f"the corpus is missing at {CORPUS}"
    assert len(sorted(CORPUS.rglob("*.eml"))) == CORPUS_SIZE


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.relative_to(CORPUS).as_posix())
def test_corpus_message_normalizes(path: Path) -> None:
    raw = path.read_bytes()
    name = path.relative_to(CORPUS).as_posix()
    if name in NOT_A_MESSAGE:
        with pytest.raises(MessageParseError, match="not an RFC 5322 message"):
            parse_message(raw)
        return

    message = parse_message(raw)

    # Reindexing by BODY.PEEK[HEADER] finds the same message.
    header_block, _ = split_header_block(raw)
    assert header_hash_from_headers(header_block) == message.header_hash
    assert KEY_RE.fullmatch(message.identity_key)
    assert message.identity_key.startswith("m:") == (message.message_id is not None)
    if message.message_id is not None:
        assert identity_key_from_headers(header_block) == message.identity_key
    else:
        assert identity_key_from_headers(header_block) is None
    assert parse_message(raw).identity_key == message.identity_key

    # Everything textual can go to Postgres (no NUL) and be encoded as UTF-8.
    for text in _texts(message):
        assert "\x00" not in text
        text.encode("utf-8")
    assert not re.search(r"[\x00-\x1f\x7f]", message.subject)

    assert len(message.snippet) <= 100
    assert message.snippet == message.snippet.strip()
    assert "  " not in message.snippet
    assert message.date is None or message.date.tzinfo is UTC
    for reference in message.references:
        assert reference.startswith("<") and reference.endswith(">")

    for attachment in message.attachments:
        assert SECTION_RE.fullmatch(attachment.part_path)
        assert re.fullmatch(r"[^/\s]+/[^/\s]+", attachment.content_type)
        assert attachment.content_type == attachment.content_type.lower()
        assert attachment.content_disposition in (None, "attachment", "inline")
        content_type, content = extract_part(raw, attachment.part_path)
        assert content_type == attachment.content_type
        assert len(content) == attachment.size


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.relative_to(CORPUS).as_posix())
def test_corpus_identity_survives_line_end_rewriting(path: Path) -> None:
    if path.relative_to(CORPUS).as_posix() in NOT_A_MESSAGE:
        return
    raw = path.read_bytes()
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    lf = raw.replace(b"\r\n", b"\n")
    key = parse_message(raw).identity_key
    assert parse_message(crlf).identity_key == key
    assert parse_message(lf).identity_key == key


# --------------------------------------------------------------------------------------
# Bodies and MIME structure
# --------------------------------------------------------------------------------------


def test_alternative_prefers_html_body_and_plain_snippet() -> None:
    raw = _message(
        "From: Ann <ann@example.com>",
        "Message-ID: <alt@example.com>",
        "Content-Type: multipart/alternative; boundary=b",
        body=(
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Plain   version\r\nhere.\r\n"
            "--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            "<html><head><style>p {color: red}</style></head>"
            "<body><p>HTML <b>version</b></p></body></html>\r\n"
            "--b--\r\n"
        ),
    )
    message = parse_message(raw)
    assert message.body_is_html
    assert "<b>version</b>" in message.body
    assert message.snippet == "Plain version here."
    assert message.attachments == ()


def test_alternative_ignores_empty_later_renderings() -> None:
    raw = _message(
        "Content-Type: multipart/alternative; boundary=b",
        body=(
            "--b\r\nContent-Type: text/plain\r\n\r\nthe text\r\n"
            "--b\r\nContent-Type: text/html\r\n\r\n<p>the html</p>\r\n"
            "--b\r\nContent-Type: text/html\r\n\r\n<html><body> </body></html>\r\n"
            "--b\r\nContent-Type: text/plain\r\n\r\n\r\n"
            "--b--\r\n"
        ),
    )
    message = parse_message(raw)
    assert message.body == "<p>the html</p>"
    assert message.snippet == "the text"


def test_html_only_snippet_skips_markup_scripts_and_styles() -> None:
    raw = _message(
        "Content-Type: text/html; charset=utf-8",
        body=(
            "<html><head><title>Title</title><style>.x{}</style></head><body>"
            "<script>var x = 1;</script><p>Caf&eacute; &amp; cr&#232;me</p>"
            "<div>second&nbsp;block</div><!-- hidden --></body></html>"
        ),
    )
    message = parse_message(raw)
    assert message.body_is_html
    assert message.snippet == "Café & crème second block"


def test_snippet_is_the_first_100_characters() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    message = parse_message(_message("Subject: long", body=words))
    assert message.snippet == words[:100]
    assert len(message.snippet) == 100


def test_nested_multiparts_follow_rfc8621_rules() -> None:
    # mixed > [A, mixed > [alternative > [mixed[B, C, D], related[E, F]], G, H, J], K]
    message = _parse("stalwart-mail-parser/rfc-007.eml")
    assert message.body_is_html
    assert "<html>E</html>" in message.body
    assert ">A</div>" in message.body and ">K</div>" in message.body
    assert message.snippet == "A B D K"
    assert [(a.part_path, a.content_type, a.is_inline) for a in message.attachments] == [
        ("2.1.1.2", "image/jpeg", True),
        ("2.1.2.2", "image/jpeg", False),
        ("2.2", "image/jpeg", False),
        ("2.3", "application/x-excel", False),
        ("2.4", "message/rfc822", False),
    ]


def test_part_paths_match_imap_section_numbers() -> None:
    # RFC 2060's own sample structure; every part states its IMAP part specifier.
    raw = _corpus("mimekit/rfc2060.eml")
    message = parse_message(raw)
    assert message.snippet == "This part specifier should be: 1"
    assert [(a.part_path, a.content_type) for a in message.attachments] == [
        ("2", "application/octet-stream"),
        ("3", "message/rfc822"),
        ("4.1", "image/gif"),
        ("4.2", "message/rfc822"),
    ]
    for section, content_type in [
        ("1", "text/plain"),
        ("2", "application/octet-stream"),
        ("3.1", "text/plain"),
        ("3.2", "application/octet-stream"),
        ("4.1", "image/gif"),
        ("4.2.1", "text/plain"),
        ("4.2.2.1", "text/plain"),
        ("4.2.2.2", "text/richtext"),
    ]:
        found_type, content = extract_part(raw, section)
        assert found_type == content_type
        assert content.strip() == f"This part specifier should be: {section}".encode()
    for section in ("3", "4.2"):
        found_type, content = extract_part(raw, section)
        assert found_type == "message/rfc822"
        assert f"Subject: This part specifier should be: {section}".encode() in content
    assert extract_part(raw, "4")[0] == "multipart/mixed"


def test_single_part_message_is_part_one() -> None:
    raw = _corpus("nodemailer-mailparser/base64encodedroot.eml")
    message = parse_message(raw)
    assert message.body == ""
    (attachment,) = message.attachments
    assert attachment == AttachmentInfo(
        filename="screenshot.png",
        content_type="image/png",
        size=425,
        content_id=None,
        is_inline=False,
        part_path="1",
        content_disposition="attachment",
    )
    content_type, content = extract_part(raw, "1")
    assert content_type == "image/png"
    assert content.startswith(b"\x89PNG\r\n")


def test_extract_part_rejects_missing_and_malformed_sections() -> None:
    raw = _corpus("mimekit/rfc2060.eml")
    for section in ("5", "1.1", "4.3", "3.3"):
        with pytest.raises(MessageParseError, match="has no part"):
            extract_part(raw, section)
    for section in ("0", "", "1.", "a", "1..2", "-1"):
        with pytest.raises(MessageParseError, match="not an IMAP section number"):
            extract_part(raw, section)


def test_extract_part_decodes_base64_attachment() -> None:
    payload = bytes(range(256)) * 3
    encoded = base64.encodebytes(payload).decode("ascii")
    raw = _message(
        "Content-Type: multipart/mixed; boundary=x",
        body=(
            "--x\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--x\r\nContent-Type: application/octet-stream; name=data.bin\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + encoded + "--x--\r\n"
        ),
    )
    (attachment,) = parse_message(raw).attachments
    assert (attachment.filename, attachment.size, attachment.part_path) == ("data.bin", 768, "2")
    assert attachment.content_disposition is None
    assert extract_part(raw, "2") == ("application/octet-stream", payload)


def test_related_inline_image_has_content_id() -> None:
    message = _parse("imap-tools/attachment_inline1.eml")
    assert message.body_is_html
    assert message.snippet.startswith("Здравствуйте")
    assert [(a.filename, a.content_id, a.is_inline) for a in message.attachments] == [
        ("blank.png", "part1.02000503.06000807@mail.ru", True),
        ("sm-ok.png", "part41.01020108.09060604@mail.ru", True),
        ("logo.png", "part51.09060808.01070700@mail.ru", True),
    ]


def test_attached_message_is_one_attachment() -> None:
    message = _parse("mikel-mail/attachment_message_rfc822.eml")
    assert message.body == "This is the first part.\n"
    (attachment,) = message.attachments
    assert (attachment.content_type, attachment.filename) == (
        "message/rfc822",
        "ForwardedMessage.eml",
    )


def test_base64_encoded_attached_message_is_decoded() -> None:
    raw = _corpus("imap-tools/attachment_2_base64.eml")
    attachments = parse_message(raw).attachments
    assert [(a.part_path, a.filename) for a in attachments] == [
        ("2", "yandex_email.eml"),
        ("3", "yandex_email.eml"),
    ]
    _, enclosed = extract_part(raw, "2")
    assert b"\nSubject: " in enclosed
    assert len(enclosed) == attachments[0].size


def test_broken_mime_degrades_to_text() -> None:
    # multipart/report without a boundary: the content is still shown.
    message = _parse("enmime/multipart-wo-boundary.eml")
    assert message.body == "I'm  multipart message without boundary\n"
    assert "NoBoundaryInMultipartDefect" in message.defects
    # The last part of an alternative is empty because the closing boundary is broken.
    message = _parse("enmime/badboundary.eml")
    assert message.snippet == "A text section"


def test_part_with_empty_type_and_a_name_is_a_file() -> None:
    message = _parse("flanker/spam-broken-ctype.eml")  # "Content-Type: ; name=facejj.jpg"
    (attachment,) = message.attachments
    assert (attachment.content_type, attachment.filename) == (
        "application/octet-stream",
        "facejj.jpg",
    )


def test_text_declared_base64_but_plain_is_kept() -> None:
    message = _parse("enmime/mime-bad-content-transfer-encoding.eml")
    assert message.snippet.startswith("ploozdect nispplul swunkglap")
    assert "FalseBase64Text" in message.defects


# --------------------------------------------------------------------------------------
# Charsets
# --------------------------------------------------------------------------------------


def test_iso_8859_1_and_2_encoded_words() -> None:
    message = _parse("php-mime-mail-parser/m0023.eml")
    assert message.to == (Participant("Keld Jørn Simonsen", "keld@dkuug.dk"),)
    assert message.cc == (Participant("André Pirard", "PIRARD@vm1.ulg.ac.be"),)
    # A part labelled UTF-8 that holds latin-1 bytes keeps its characters.
    assert "Det här är ett flerdelat meddelande" in message.body
    assert _parse("mailcore2/jwz-58.eml").from_[0].name == "Vladimír Solnický"


def test_iso_8859_2_header_and_body() -> None:
    headers = dict(_parse("mailcore2/jwz-58.eml").headers)
    assert headers["X-Postal-Address"] == (
        "ÚTIA AV ČR; Pod vodárenskou věží 4; 182 08  Praha 8-Libeň; Czech Republic"
    )
    raw = _message(
        "Content-Type: text/plain; charset=ISO-8859-2",
        "Content-Transfer-Encoding: quoted-printable",
        body="Za=BF=F3=B3=E6 g=EA=B6l=B1 ja=BC=F1",
    )
    assert parse_message(raw).body == "Zażółć gęślą jaźń"


def test_windows_1251_subject_and_html() -> None:
    message = _parse("mailcore2/4850-russian.eml")
    assert message.subject == "Рассылка: Уведомление участникам тендеров"
    assert message.snippet.startswith("Рассылка c сайта: www.neftgazdepozit.uz")


def test_windows_1252_body() -> None:
    message = _parse("mailcore2/1015-windows-1252.eml")
    assert "which is why the microphone wasn’t showing up." in message.body
    assert "––––" in message.body


def test_koi8_r() -> None:
    message = _parse("mailcore2/989-encoding-4.eml")
    assert message.subject == "услуги перевода в Турции"
    assert message.snippet.startswith("Добрый день, Марина.")
    (attachment,) = _parse("mime4j/russian-headers.eml").attachments
    assert attachment.filename == "Список.doc"
    # "koi8_r" with an underscore is the same charset.
    assert "Хуйня обзор господа" in _parse("mailcore2/6144-russian.eml").snippet


def test_iso_2022_jp() -> None:
    assert _parse("mikel-mail/rfc2822-example14.eml").subject == "Re: TEST  テストテスト"
    # Outlook's NEC row 13 characters (here "№") are not in Python's ISO-2022-JP codecs.
    assert _parse("php-mime-mail-parser/issue116.eml").subject == "ЖД№41 от 28.09.2016"
    # No Content-Type at all: the 7-bit ISO-2022-JP body is recognised by its escapes.
    message = _parse("mailcore2/1433-utf-8.eml")
    assert message.from_ == (Participant("プレスネットワーク", "info@pressnet.tv"),)
    assert "プレスネットワークダイジェスト" in message.snippet
    # A carrier emoji outside JIS X 0208 does not spoil the rest of the text.
    assert _parse("mailcore2/5231-emoji.eml").body.startswith("あけましておめでとうございます！")


def test_gb2312_gbk_gb18030() -> None:
    message = _parse("webklex-php-imap/gbk_charset.eml")
    assert message.body == "Hi\n"
    assert "UnknownCharset" not in message.defects
    assert _parse("mailcore2/1021-chinese.eml").subject == "哈哈"
    message = _parse("spamscope-mail-parser/mail_test_9.eml")
    assert message.subject.startswith("我把镜头拉近些，你们看看")
    # Raw GB2312 bytes in the header decode through the body's charset; the body itself is
    # UTF-8 under a GB2312 label and is recovered too.
    message = _parse("spamscope-mail-parser/mail_test_12.eml")
    assert message.from_ == (Participant("张先生", "baoguan@hotmail.com"),)
    assert message.subject == "代开各地增值税发票"
    assert message.body.startswith("你好")
    assert "MislabelledCharset" in message.defects


def test_big5_labelled_us_ascii_is_detected() -> None:
    message = _parse("enmime/chardet-success-big-5.eml")
    assert message.snippet.startswith("顏是家訓 北齊 顏之推 卷第七 音辭 雜藝 終制")
    assert "CharsetDetected" in message.defects


def test_korean_labels() -> None:
    assert _parse("mikel-mail/ks_c_5601-1987.eml").body == "스티해\n"
    message = _parse("webklex-php-imap/ks_c_5601-1987_headers.eml")
    assert message.subject == "RE: 회원님께 Ersi님이 메시지를 보냈습니다."
    assert message.from_ == (Participant("김 현진", "from@there.com"),)
    assert _parse("mikel-mail/raw_email.eml").subject == "NOTE: 한국말로 하는 것"


def test_other_charsets_python_lacks_or_misnames() -> None:
    # windows-874 (Thai)
    assert _parse("mailcore2/5230-thai-chinese.eml").subject == "เหตุทำให้สมองเสื่อมไว"
    # iso-8859-8-i (Hebrew, logical order)
    assert _parse("php-mime-mail-parser/issue149.eml").subject.startswith("מענה 'אני לא נמצא'")
    # x-mac-cyrillic
    message = _parse("php-mime-mail-parser/issue230.eml")
    assert message.body_is_html
    assert "UnknownCharset" not in message.defects
    # unicode-1-1-utf-7
    assert "UnknownCharset" not in _parse("sisimai/lhost-outlook-01.eml").defects
    # Turkish iso-8859-9 encoded-word
    assert _parse("mailcore2/2458-encoding.eml").subject.startswith("Üye olduğunuz")


@pytest.mark.parametrize(
    ("name", "snippet_start"),
    [
        ("mikel-mail/raw_email10.eml", "Test test. Hi. Waving."),  # X-UNKNOWN
        ("enmime/html-mime-bad-unknown-charset-inline.eml", "Test of text section"),  # us-askey
        ("enmime/unk-charset-html-only.eml", "Hello World!"),  # fakescii-7
        ("zbateson-mail-mime-parser/invalid-charset.eml", "The Hare and the Tortoise"),
        ("webklex-php-imap/unknown_encoding.eml", "MyPlain"),  # charset= and CTE foobar
    ],
)
def test_broken_charset_labels_fall_back(name: str, snippet_start: str) -> None:
    assert _parse(name).snippet.startswith(snippet_start)


def test_unknown_charset_encoded_word_is_still_decoded() -> None:
    message = _parse("webklex-php-imap/undefined_charset_header.eml")  # X-IAS-German
    assert message.subject == "Submit your tax refund | Australian Taxation Office."
    assert message.from_ == (Participant("myGov", "info@bla.bla"),)


def test_invalid_bytes_in_declared_charset_are_replaced_not_dropped() -> None:
    # RFC 2231 name labelled ISO-2022-JP with an 8-bit byte that charset cannot hold.
    (attachment,) = _parse("mikel-mail/attachment_with_encoded_name.eml").attachments
    assert attachment.filename == "01 Quien Te Dij\ufffdat. Pitbull.mp3"
    raw = _message("Subject: =?utf-8?q?caf=C3=A9_=FF_ok?=", body="x")
    assert parse_message(raw).subject == "café \ufffd ok"


# --------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------


def test_8bit_headers() -> None:
    assert _parse("flanker/from-encoding.eml").from_[0].name == "Ingo Lütkebohle"
    message = _parse("mikel-mail/utf8_headers.eml")
    assert message.subject == "Säying Hello"
    assert message.from_ == (Participant("Jöhn Doe", "jdöe@mächine.example"),)
    # Raw windows-1252 in a Subject next to a proper encoded-word in From.
    message = _parse("mikel-mail/invalid_subject_characters.eml")
    assert message.subject.startswith("Formação FrenetikPolis: Mega Campanha Final Verão")
    # Raw EUC-KR Subject; the HTML part declares euc-kr.
    assert _parse("mailcore2/1640-no-charset.eml").subject == (
        "[멜론] 이용약관 및 서비스 상품약관 변경 안내"
    )
    # UTF-8 with one stray byte stays UTF-8.
    assert _parse("flanker/mailformed-headers.eml").from_[0].name == "Юникод запрещенñ"


def test_8bit_attachment_names() -> None:
    (attachment,) = _parse("mikel-mail/attachment_nonascii_filename.eml").attachments
    assert attachment.filename == "ciële.txt"
    (attachment,) = _parse("enmime/mime-bad-8bit-filename.eml").attachments
    assert attachment.filename == "管理.doc"


def test_rfc2231_and_rfc2047_filenames() -> None:
    (attachment,) = _parse("mikel-mail/japanese_attachment_long_name.eml").attachments
    assert attachment.filename == "かきくけこ" * 5 + ".txt"
    assert attachment.content_disposition == "attachment"
    (attachment,) = _parse("mikel-mail/attachment_with_quoted_filename.eml").attachments
    assert attachment.filename == "Eelanalüüsi päring.jpg"
    (attachment,) = _parse("webklex-php-imap/attachment_encoded_filename.eml").attachments
    assert attachment.filename == "Prostřeno_2014_poslední volné termíny.xls"
    (attachment,) = _parse("enmime/mime-unquoted-tspecials-param.eml").attachments
    assert attachment.filename == "Invoice_(302232133150612).pdf"
    (attachment,) = _parse("webklex-php-imap/issue-410symbols.eml").attachments
    assert attachment.filename == "Checkliste 10.,DAVIDGASSE 76-80;2;2.pdf"


def test_filenames_never_carry_directories_or_line_breaks() -> None:
    (attachment,) = _parse("php-mime-mail-parser/m0027.eml").attachments
    assert attachment.filename == "1234.txt"  # was "1234/../../1234.txt"
    (attachment,) = _parse("php-mime-mail-parser/issue250.eml").attachments
    assert attachment.filename == "Kontoutskrift for 1506.14.90466 Bedriftskonto.pdf"


def test_encoded_words_split_inside_characters() -> None:
    assert _parse("mailcore2/broken-utf8.eml").subject == (
        "ระเบิดความมันส์เต็มพิกัด TRANSFORMERS 4 มันส์ครบทุกระบบ ที่เดียวในเมืองไทย"
    )


def test_address_oddities() -> None:
    # An encoded name containing a comma is one mailbox.
    assert _parse("flanker/encoded-header.eml").from_ == (
        Participant("Foo, Bar", "foo.bar@example.com"),
    )
    # An unquoted "@" in a display name.
    assert _parse("mikel-mail/raw_email_with_at_display_name.eml").to == (
        Participant("", "smith@gmail.com"),
        Participant("Mikel@Lindsaar", "raasdnil@gmail.com"),
        Participant("", "tom@gmail.com"),
    )
    # Mailboxes without a comma between them; an empty address.
    assert _parse("enmime/malformed-multiple-address-header-values.eml").from_ == (
        Participant("Bob Dunite", "bob@extern"),
        Participant("Bobby Dunite", "bobby@extern"),
    )
    assert _parse("webklex-php-imap/undisclosed_recipients.eml").to == (
        Participant("Undisclosed Recipients", ""),
    )
    assert _parse("mikel-mail/empty_group_lists.eml").to == ()
    # A phrase without any address is a name, not an address.
    raw = _message("To: =?utf-8?q?Team_Sales?=, b@x", body="x")
    assert parse_message(raw).to == (Participant("Team Sales", ""), Participant("", "b@x"))
    # Encoded-word holding specials (":)"), and a double-encoded name.
    assert _parse("mailcore2/headers.eml").from_[0].name == "Вестник Чиптрипа® :)"
    message = _parse("enmime/qp-utf8-header-recursed.eml")
    assert message.from_[1].name.startswith("WirelessCaller (203) 402-5984")
    assert message.from_[1].email == "PIRARD@vm1.ulg.ac.be"
    # Duplicate To/Cc headers all count.
    message = _parse("imap-tools/double_fields.eml")
    assert [p.email for p in message.to] == ["aa@aa.ru", "bb@aa.ru"]
    assert Participant("a", "b").as_dict() == {"name": "a", "email": "b"}


def test_missing_headers() -> None:
    message = _parse("webklex-php-imap/missing_from.eml")
    assert (message.from_, message.subject, message.body) == ((), "Nuu", "Hi\n")
    message = _parse("webklex-php-imap/missing_date.eml")
    assert message.date is None
    assert message.message_id is None
    message = _parse("mime4j/malformedHeader-noheader.eml")
    assert message.headers == ()
    assert message.body.startswith("This is a simple message not having headers.")


def test_obsolete_header_syntax_is_recovered() -> None:
    message = _parse("mikel-mail/rfc2822-example13.eml")  # "From  :", comments in Date
    assert message.from_ == (Participant("John Doe (comment)", "jdoe@machine.example"),)
    assert message.subject == "Saying Hello"
    assert message.date == datetime(1997, 11, 21, 15, 55, 6, tzinfo=UTC)
    # A junk line in the middle of the header block must not swallow the later fields.
    message = _parse("mikel-mail/raw_email_incorrect_header.eml")
    assert message.subject == "Stop adware/spyware once and for all."
    assert message.message_id == "<4D6AA7EB.6490534@xxx.xxx>"
    assert message.body.startswith("You are infected with:")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("webklex-php-imap/thread_my_topic.eml", datetime(2017, 9, 13, 11, 5, 45, tzinfo=UTC)),
        (
            "mikel-mail/missing_content_disposition.eml",
            datetime(2002, 1, 22, 14, 35, 28, tzinfo=UTC),
        ),
        ("mikel-mail/bad_date_header.eml", None),  # "<HR>"
        ("mikel-mail/bad_date_header2.eml", None),  # 59:10
        ("webklex-php-imap/date-template.eml", None),  # "%date_raw_header%"
    ],
)
def test_dates_are_utc_or_none(name: str, expected: datetime | None) -> None:
    assert _parse(name).date == expected


def test_threading_headers() -> None:
    message = _parse("webklex-php-imap/thread_re_my_topic.eml")
    assert (message.message_id, message.in_reply_to) == ("<456@example.com>", "<123@example.com>")
    message = _parse("mikel-mail/multiple_references_with_one_invalid.eml")
    assert message.references == (
        "<foo@bar.net>",
        "<baz@bar.net>",
        "<invalid.something@bar.net>",
    )
    assert _parse("mikel-mail/empty_in_reply_to.eml").in_reply_to is None


def test_headers_are_decoded_in_order() -> None:
    raw = _message(
        "X-First: 1",
        "Subject: =?utf-8?b?w6l0w6k=?=",
        "X-Folded: a",
        "\tb",
        body="x",
    )
    assert parse_message(raw).headers == (("X-First", "1"), ("Subject", "été"), ("X-Folded", "a b"))


def test_bom_and_mbox_line_are_stripped() -> None:
    message = _parse("mimekit/feedback-report.eml")  # UTF-8 BOM before the first header
    assert message.from_ == (Participant("", "abusedesk@example.com"),)
    message = _parse("mikel-mail/attachment_pdf_lf.eml")  # mbox "From " line
    assert message.subject == "Another PDF with 🎉 Unicode chars in it 🍿"
    assert message.headers[0][0] != "From "


def test_decode_header_helper() -> None:
    assert decode_header("=?ISO-8859-1?Q?Andr=E9?= Pirard") == "André Pirard"
    assert decode_header(b"caf\xc3\xa9") == "café"
    assert decode_header(b"K\xf6ln") == "Köln"
    assert decode_header("=?utf-8?q?a?= \r\n =?utf-8?q?b?=") == "ab"


# --------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------


def test_message_id_key_uses_header_hash() -> None:
    raw = _message(
        "Message-ID:  <abc@x> ",
        "Date: Mon, 1 Jan 2024 10:00:00 +0000",
        "From: a@x",
        "To: b@x",
        "Subject: hi",
        body="body",
    )
    message = parse_message(raw)
    assert message.message_id == "<abc@x>"
    assert message.header_hash == identity_headers_hash(
        "<abc@x>", "Mon, 1 Jan 2024 10:00:00 +0000", "a@x", "b@x", "hi"
    )
    assert message.identity_key == "m:" + message.header_hash
    # Folding and body changes do not move a message with a Message-ID.
    refolded = raw.replace(b"Subject: hi", b"Subject:\r\n  hi").replace(b"body", b"other")
    assert parse_message(refolded).identity_key == message.identity_key


def test_synthetic_identity_without_message_id() -> None:
    first = _corpus("webklex-php-imap/missing_date.eml")
    second = _corpus("webklex-php-imap/missing_from.eml")
    key = parse_message(first).identity_key
    assert key.startswith("s:")
    assert parse_message(first).identity_key == key  # stable
    assert parse_message(second).identity_key != key  # different messages differ
    # Same headers, different body: different messages.
    changed = first.replace(b"Hi", b"Ho")
    assert changed != first
    assert parse_message(changed).identity_key != key
    assert identity_key_from_headers(split_header_block(first)[0]) is None
    # The key is the documented combination of header hash and body digest.
    _, body = split_header_block(first)
    body_digest = hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip(b" \t\n")).hexdigest()
    expected = hashlib.sha256((parse_message(first).header_hash + body_digest).encode()).hexdigest()
    assert key == "s:" + expected


def test_header_hash_ignores_charset_handling_and_whitespace() -> None:
    raw = b"Subject: caf\xe9\r\nFrom: a@x\r\n\r\nbody"
    expected = identity_headers_hash(None, "", "a@x", "", "caf\xe9")
    assert parse_message(raw).header_hash == expected
    assert header_hash_from_headers(b"From:   a@x\nSubject:\n caf\xe9\n\n") == expected


# --------------------------------------------------------------------------------------
# Subjects
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: Hello", "hello"),
        ("RE: re: Fwd: FW: Hello   World", "hello world"),
        ("Fw: AW: WG: SV: VS: Antw: Hello", "hello"),
        ("R: RIF: TR: Réf: Hello", "hello"),
        ("回复: 转发: 你好", "你好"),
        ("回复：你好", "你好"),  # full-width colon
        ("Re[2]: Re(3): Hello", "hello"),
        ("[list-tag] Re: [other] Hello", "hello"),
        ("RE\xa0: TR : Installation", "installation"),
        ("【重要】Re：お知らせ", "お知らせ"),
        ("Straße", "strasse"),
        ("ＡＢＣ", "ａｂｃ"),  # nothing but prefixes, whitespace and case changes
        ("Re:", ""),
        ("Regarding: the plan", "regarding: the plan"),
        ("Reply all", "reply all"),
    ],
)
def test_normalize_subject(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


# --------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------


def test_unusable_input_raises() -> None:
    for raw in (b"", b"  \r\n\r\n", b"\xef\xbb\xbf", b"From sender Mon Jan  1 00:00:00 2024\n"):
        with pytest.raises(MessageParseError, match="empty"):
            parse_message(raw)
    with pytest.raises(MessageParseError, match="not an RFC 5322 message"):
        parse_message(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))


def test_25_mb_message() -> None:
    # 24 MiB attachment, base64: about 33 MB on the wire. The payload is decoded once to
    # size it; the test checks the result, timing is measured outside the suite.
    payload = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    raw = (
        b"From: Big Sender <big@example.com>\r\n"
        b"To: you@example.com\r\n"
        b"Subject: =?utf-8?q?gro=C3=9Fe_Datei?=\r\n"
        b"Message-ID: <big@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="BIG"\r\n\r\n'
        b"--BIG\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the attachment.\r\n"
        b"--BIG\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''gr%C3%B6%C3%9Fe.bin\r\n\r\n"
        + encoded
        + b"--BIG--\r\n"
    )
    assert len(raw) > 25_000_000
    message = parse_message(raw)
    assert message.subject == "große Datei"
    assert message.body == "See the attachment."  # the CRLF before a boundary is its own
    (attachment,) = message.attachments
    assert (attachment.filename, attachment.size, attachment.part_path) == (
        "größe.bin",
        len(payload),
        "2",
    )
    content_type, content = extract_part(raw, "2")
    assert content_type == "application/octet-stream"
    assert content == payload
