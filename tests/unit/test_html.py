"""html_to_text: readable text from mail HTML, with quotes as "> " lines."""

from __future__ import annotations

import pytest

from helpdesk.mail.html import html_to_text
from helpdesk.mail.quoting import split_reply


def test_empty() -> None:
    """Empty HTML gives empty text."""
    assert html_to_text("") == ""


def test_script_style_head_are_skipped() -> None:
    """Script, style, head and title contents never reach the text."""
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head>"
        "<body><script>alert('x')</script><p>Visible</p><noscript>fallback</noscript></body></html>"
    )
    assert html_to_text(html) == "Visible\n\nfallback"


def test_unclosed_head_ends_at_body() -> None:
    """A head that is never closed ends where the body starts."""
    assert html_to_text("<head><title>x</title><body>Hi</body>") == "Hi"


def test_paragraphs_are_separated_by_blank_lines() -> None:
    """Paragraphs become blocks separated by one blank line."""
    assert html_to_text("<p>One</p><p>Two</p>") == "One\n\nTwo"


def test_divs_and_br_make_line_breaks() -> None:
    """Block elements and <br> break lines; Gmail's <div><br></div> is a blank line."""
    html = '<div dir="ltr">Hi,<div><br></div><div>line one<br>line two</div></div>'
    assert html_to_text(html) == "Hi,\n\nline one\nline two"


def test_at_most_one_blank_line() -> None:
    """Runs of empty paragraphs and <br>s collapse to a single blank line."""
    html = "<p>A</p><p>&nbsp;</p><p></p><br><br><br><p>B</p>"
    assert html_to_text(html) == "A\n\nB"


def test_whitespace_is_collapsed_and_entities_unescaped() -> None:
    """Runs of white space collapse to one space; entities are unescaped."""
    html = "<p>  Drucker \n\t im&nbsp;&nbsp;3.&nbsp;Stock &amp; &lt;Keller&gt; &eacute;&#8364;</p>"
    assert html_to_text(html) == "Drucker im 3. Stock & <Keller> é€"


def test_inline_elements_keep_spacing() -> None:
    """Inline tags neither add nor remove spaces between words."""
    assert html_to_text("<p>a <b>bold</b> move, <i>x</i>y</p>") == "a bold move, xy"


def test_unordered_and_ordered_lists() -> None:
    """Lists become "- item" and "1. item" lines, nested lists are indented."""
    html = (
        "<ul><li>one</li><li>two<ol><li>a</li><li>b</li></ol></li></ul>"
        "<ol start='3'><li>c</li></ol>"
    )
    assert html_to_text(html) == "- one\n- two\n  1. a\n  2. b\n\n3. c"


def test_links_show_url_when_text_differs() -> None:
    """Links are "text (url)", but a url or address that is its own text is not repeated."""
    html = (
        '<p><a href="https://wiki.example.com/vpn">the wiki</a>, '
        '<a href="https://example.com/">https://example.com</a>, '
        '<a href="mailto:support@example.com">support@example.com</a>, '
        '<a href="#top">top</a></p>'
    )
    assert html_to_text(html) == (
        "the wiki (https://wiki.example.com/vpn), https://example.com, support@example.com, top"
    )


def test_tables_are_rows_of_cells() -> None:
    """Each table row is one line with cells separated by " | "."""
    html = "<table><tr><th>Name</th><th>Value</th></tr><tr><td>CPU</td><td>95%</td></tr></table>"
    assert html_to_text(html) == "Name | Value\nCPU | 95%"


def test_pre_keeps_white_space() -> None:
    """Preformatted text keeps its spaces and line breaks."""
    assert html_to_text("<pre>a  b\n  c</pre>") == "a  b\n  c"


def test_blockquote_is_prefixed() -> None:
    """Blockquote lines are "> " prefixed, nested quotes "> > "."""
    html = "<p>New</p><blockquote>Old<br>older line<blockquote>oldest</blockquote></blockquote>"
    assert html_to_text(html) == "New\n\n> Old\n> older line\n>\n> > oldest"


def test_gmail_quote_container_is_quoted() -> None:
    """Gmail's gmail_quote div, attribution included, is rendered as quote."""
    html = (
        '<div dir="ltr">Thanks!</div><br><div class="gmail_quote">'
        '<div dir="ltr" class="gmail_attr">Am Di., 3. Sept. 2024 um 10:00 Uhr schrieb IT '
        "&lt;support@example.com&gt;:<br></div>"
        '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px solid">'
        "Please restart.</blockquote></div>"
    )
    text = html_to_text(html)
    assert text.startswith("Thanks!\n\n> Am Di., 3. Sept. 2024")
    assert "> > Please restart." in text
    assert split_reply(text) == ("Thanks!", text.split("\n\n", 1)[1])


def test_outlook_border_top_header_quotes_the_rest() -> None:
    """Outlook desktop's border-top reply header and everything after it are quoted."""
    html = (
        '<div class="WordSection1"><p class="MsoNormal">Fixed, thanks.<o:p></o:p></p>'
        '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
        '<p class="MsoNormal"><b>From:</b> IT &lt;support@example.com&gt;<br><b>Sent:</b> Monday'
        "</p></div><p>Please restart the printer.</p></div>"
    )
    text = html_to_text(html)
    assert text == (
        "Fixed, thanks.\n\n> From: IT <support@example.com>\n> Sent: Monday\n>\n"
        "> Please restart the printer."
    )
    assert split_reply(text)[0] == "Fixed, thanks."


def test_outlook_web_divrplyfwdmsg_quotes_the_rest() -> None:
    """OWA's divRplyFwdMsg header and the original after it are quoted."""
    html = (
        "<div>Done.</div><hr style='display:inline-block;width:98%' tabindex='-1'>"
        '<div id="divRplyFwdMsg" dir="ltr"><b>From:</b> IT<br><b>Subject:</b> x</div>'
        "<div>original text</div>"
    )
    assert html_to_text(html) == "Done.\n\n> From: IT\n> Subject: x\n> original text"


def test_apple_cite_blockquote() -> None:
    """Apple Mail's type="cite" blockquote is a quote, the attribution inside too."""
    html = (
        "Sure.<div><br><blockquote type='cite'><div>On 12 Sep 2024, at 16:40, IT "
        "&lt;support@example.com&gt; wrote:</div><br><div>Hi</div></blockquote></div>"
    )
    text = html_to_text(html)
    assert text == "Sure.\n\n> On 12 Sep 2024, at 16:40, IT <support@example.com> wrote:\n>\n> Hi"
    assert split_reply(text) == ("Sure.", text.split("\n\n", 1)[1])


def test_borderless_blockquote_is_indentation() -> None:
    """Gmail's "indent more" (a borderless blockquote) is the writer's own text."""
    html = (
        '<div>a</div><blockquote style="margin:0 0 0 40px;border:none;padding:0px">b</blockquote>'
    )
    assert html_to_text(html) == "a\n\nb"


@pytest.mark.parametrize(
    "html",
    [
        "<p>unclosed <b>bold <div>text",
        "</div></p></blockquote>stray end tags",
        "<![if !supportLists]>x<![endif]> <!-- comment --> y",
        "<a href='x'>link <a href='y'>nested</a>",
        "<table><td>cell without row",
        "<" * 1000 + "text",
        "<div>" * 5000 + "deep" + "</span>" * 5000,
        "&#0; &#xD800; &bogus; &",
        "<li>item outside a list",
    ],
)
def test_broken_html_never_raises(html: str) -> None:
    """Broken HTML gives some text and never raises."""
    assert isinstance(html_to_text(html), str)


def test_broken_markup_keeps_text_before_it() -> None:
    """Text before a declaration html.parser chokes on is still returned."""
    assert html_to_text("<p>kept</p><![bogus junk").startswith("kept")


def test_list_item_outside_list_gets_dash() -> None:
    """An <li> outside any list still reads as an item."""
    assert html_to_text("<li>item</li>") == "- item"


def test_images_are_dropped() -> None:
    """Images (tracking pixels, inline pictures) leave no text behind."""
    assert html_to_text('<p>a<img src="cid:x" alt="logo">b</p>') == "ab"
