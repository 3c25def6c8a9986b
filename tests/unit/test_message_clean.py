"""pipeline.messages.clean (and htmllines): real mail from the corpus cleaned to its own words,
then each rule and option on small bodies, then the bounds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.messages.clean import CleanOptions, clean_body, looks_like_html
from pipeline.messages.htmllines import MAX_ELEMENTS
from pipeline.mime import parse_message
from tests.support.corpus import CORPUS, corpus_files

KEEP_ALL = CleanOptions(
    ignore_links=False,
    ignore_images=False,
    images_as_markdown=False,
    ignore_tables=False,
    remove_conclusion_phrases=False,
)


def _body(name: str) -> str:
    return parse_message((CORPUS / name).read_bytes()).body


# --- the corpus ----------------------------------------------------------------------------------


def test_a_bottom_posted_list_reply_is_its_one_line() -> None:
    """Gmail's plain text: the attribution, 30 quoted lines (with the list's quoted "--"
    footer), the reply, then the sender's "--" signature."""
    assert clean_body(_body("php-mime-mail-parser/issue84.eml")) == "+1 from me."


def test_quoted_lines_and_their_attribution_go_and_the_reply_stays() -> None:
    cleaned = clean_body(_body("mailcore2/jwz-58.eml"))
    assert cleaned.startswith("Message seems to look good. What parameters do you use")
    assert "Shlomi Fish wrote" not in cleaned
    assert "nobody@medusa" not in cleaned  # a quoted line
    assert "I hope some of these suggestions may help." in cleaned

    short = clean_body(_body("flanker/from-encoding.eml"))
    assert short.startswith("Isn't that the case for almost every other server")
    assert "Marc Slemko wrote" not in short
    assert "buffer overflow" not in short


def test_a_message_that_is_all_quote_box_keeps_its_text() -> None:
    """The HTML part is nothing but gmail_quote divs: removing them would leave nothing."""
    cleaned = clean_body(_body("mikel-mail/two_from_in_message.eml"))
    assert cleaned.startswith("<p>When sending email:<br>* From Hotmail you get the ads")
    assert "signature/ads) from email messages.</p>" in cleaned


def test_a_newsletter_loses_its_markup_and_keeps_its_text() -> None:
    body = _body("mailcore2/6144-russian.eml")
    assert "<table" in body and "href=" in body and "<title>" in body
    cleaned = clean_body(body)
    assert "MEHANIK8888 has made a comment on" in cleaned
    assert "<table" not in cleaned and "<a " not in cleaned and "<img" not in cleaned
    assert "Comment posted on" not in cleaned  # the <title>

    kept = clean_body(body, KEEP_ALL)
    assert "<table>" in kept and '<a href="http' in kept and "MEHANIK8888" in kept

    markdown = clean_body(body, CleanOptions(ignore_links=False, html_as_markdown=True))
    assert "](http" in markdown and "<" not in markdown.replace("<3", "")


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.relative_to(CORPUS).as_posix())
def test_every_corpus_message_cleans(path: Path) -> None:
    """No message breaks the cleaning, with any options; no script or style survives."""
    try:
        body = parse_message(path.read_bytes()).body
    except Exception:  # not a message at all (test_mime covers those)
        return
    for options in (CleanOptions(), KEEP_ALL, CleanOptions(html_as_markdown=True)):
        cleaned = clean_body(body, options)
        assert isinstance(cleaned, str)
        if looks_like_html(body):
            assert "<script" not in cleaned.lower() and "<style" not in cleaned.lower()


# --- rules ---------------------------------------------------------------------------------------

GMAIL_REPLY = (
    '<div dir="ltr">Sounds good, see you at <b>noon</b>.<div><br></div>'
    "<div>Best regards,</div><div>Ann</div>"
    '<div><br></div>-- <br><div dir="ltr" class="gmail_signature">Ann Example | CTO</div></div>'
    '<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Mon, Dec 7, 2026 at '
    "9:00 AM Bob &lt;bob@example.test&gt; wrote:<br></div>"
    '<blockquote class="gmail_quote">Lunch?</blockquote></div>'
    "<script>track()</script><style>div{color:red}</style>"
)


def test_a_gmail_reply_is_its_new_text() -> None:
    assert clean_body(GMAIL_REPLY) == "<p>Sounds good, see you at <b>noon</b>.</p>"
    kept = clean_body(GMAIL_REPLY, CleanOptions(remove_conclusion_phrases=False))
    assert kept == "<p>Sounds good, see you at <b>noon</b>.</p>\n<p>Best regards,<br>Ann</p>"


def test_outlook_history_after_appendonsend_goes() -> None:
    body = (
        "<html><body><div>Approved, thanks!</div>"
        '<div id="appendonsend"></div><hr style="display:inline-block">'
        '<div id="divRplyFwdMsg"><b>From:</b> Bob<br><b>Sent:</b> Monday<br>'
        "<b>To:</b> Ann</div><div>Can you approve the budget?</div></body></html>"
    )
    assert clean_body(body) == "<p>Approved, thanks!</p>"


@pytest.mark.parametrize(
    "body",
    [
        "Fine by me.\n\n-----Original Message-----\nFrom: Bob\nSent: Monday\nTo: Ann\n\nOld",
        "Fine by me.\n\n________________________________\nFrom: Bob <bob@example.test>\n"
        "Sent: Monday, December 7, 2026 9:00 AM\nTo: Ann\nSubject: Re: budget\n\nOld",
        "Fine by me.\n\nOn Mon, Dec 7, 2026 at 9:00 AM Bob Example <bob@example.test>\n"
        "wrote:\n\n> Old\n> text",
        "Fine by me.\n\nSent from my iPhone\n\n> On 7 Dec 2026, at 09:00, Bob wrote:\n> Old",
        "Fine by me.\n\nLe lun. 7 déc. 2026 à 09:00, Bob <bob@example.test> a écrit :\n> Old",
        "Fine by me.\n\n-- \nAnn Example\nExample Corp",
        "Fine by me.\n\nThanks,\nAnn",
        "Fine by me.\n\nCheers, Ann",
    ],
)
def test_plain_text_history_signatures_and_closings_go(body: str) -> None:
    assert clean_body(body) == "Fine by me."


def test_a_forward_keeps_the_forwarded_message() -> None:
    body = (
        "FYI\n\n---------- Forwarded message ---------\nFrom: Bob <bob@example.test>\n"
        "Date: Mon, Dec 7, 2026\nSubject: Budget\nTo: Ann\n\nThe budget is approved."
    )
    assert clean_body(body) == body


def test_closings_need_words_before_them_and_a_line_of_their_own() -> None:
    assert clean_body("Thanks!") == "Thanks!"
    assert clean_body("Sure.\n\nThanks for the update") == "Sure.\n\nThanks for the update"
    assert clean_body("Sure.\n\nThanks, Ann", CleanOptions(remove_conclusion_phrases=False)) == (
        "Sure.\n\nThanks, Ann"
    )
    long_tail = "Sure.\n\nBest,\nAnn\n\n" + "A paragraph written after the closing. " * 3
    assert clean_body(long_tail) == long_tail.strip()


# --- options -------------------------------------------------------------------------------------

RICH = (
    '<p>See <a href="https://example.test/plan">the plan</a>'
    '<img src="https://example.test/open.gif" width="1" height="1"></p>'
    '<p><img src="https://example.test/chart.png" alt="Chart"></p>'
    "<table><tr><th>Quarter</th><th>Total</th></tr><tr><td>Q1</td><td>10</td></tr></table>"
)


def test_defaults_drop_links_images_and_table_tags() -> None:
    assert clean_body(RICH) == "<p>See the plan</p>\n<p>Quarter Total<br>Q1 10</p>"


def test_kept_links_images_and_tables_in_html() -> None:
    assert clean_body(RICH, KEEP_ALL) == (
        '<p>See <a href="https://example.test/plan">the plan</a></p>\n'
        '<p><img src="https://example.test/chart.png" alt="Chart"></p>\n'
        "<table><tr><td>Quarter</td><td>Total</td></tr><tr><td>Q1</td><td>10</td></tr></table>"
    )  # the 1x1 tracking pixel never stays


def test_images_as_markdown_in_html() -> None:
    options = CleanOptions(ignore_images=False)
    assert clean_body(RICH, options) == (
        "<p>See the plan</p>\n<p>![Chart](https://example.test/chart.png)</p>\n"
        "<p>Quarter Total<br>Q1 10</p>"
    )


def test_html_as_markdown() -> None:
    options = CleanOptions(
        ignore_links=False, ignore_images=False, ignore_tables=False, html_as_markdown=True
    )
    assert clean_body("<h2>Plan</h2><ul><li><i>one</i></li><li>two</li></ul>" + RICH, options) == (
        "## Plan\n\n- _one_\n- two\n\nSee [the plan](https://example.test/plan)\n\n"
        "![Chart](https://example.test/chart.png)\n\n"
        "| Quarter | Total |\n| --- | --- |\n| Q1 | 10 |"
    )


def test_only_web_links_and_images_are_kept() -> None:
    body = '<p><a href="javascript:alert(1)">x</a> <img src="data:image/png;base64,AAAA"></p>'
    assert clean_body(body, KEEP_ALL) == "<p>x</p>"


def test_text_is_escaped_in_html() -> None:
    assert clean_body("<p>a &lt;b&gt; &amp; c</p>") == "<p>a &lt;b&gt; &amp; c</p>"


def test_plain_text_with_addresses_in_brackets_is_not_html() -> None:
    assert not looks_like_html("Ann <a@example.test> wrote <b@example.test>")
    assert looks_like_html('<div dir="ltr">x</div>') and looks_like_html("x<br/>y")


# --- bounds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "<div>" * 50_000 + "deep" + "</div>" * 50_000,
        "<b>" * 200_000,
        '<a href="https://x.test/">' * 100_000 + "t",
        "<p>" + "<i>x</i> " * 100_000,
        "hi" + "\n>" * 300_000,
        "<p>x<!-- an unterminated comment " + "a" * 500_000,
    ],
    ids=["deep", "unclosed", "links", "many-inline", "quoted-lines", "comment"],
)
def test_hostile_bodies_are_cleaned_in_bounded_time(body: str) -> None:
    start = time.perf_counter()
    clean_body(body, KEEP_ALL)
    clean_body(body)
    assert time.perf_counter() - start < 10  # 0.5 s for the two here; CI may be loaded


def test_tags_past_the_budget_are_not_read() -> None:
    body = "<p>kept</p>" * MAX_ELEMENTS + "<p>never read</p>" * 10  # start tags count
    cleaned = clean_body(body)
    assert cleaned.startswith("<p>kept<br>") or cleaned.startswith("<p>kept</p>")
    assert "never read" not in cleaned
