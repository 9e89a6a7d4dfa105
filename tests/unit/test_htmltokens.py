"""mail/htmltokens.py: the tokens html.parser gives, read in one forward pass.

html.parser stays the oracle for HTML whose constructs are all closed; where
they are not, the tokenizer follows the HTML standard (what a browser shows)
instead of rescanning the rest of the input.
"""

from __future__ import annotations

import random
from html.parser import HTMLParser

import pytest

from helpdesk.mail.htmltokens import tokenize

Event = tuple[str, ...]


class Recorder:
    """Records the callbacks, merging adjacent text (html.parser splits it arbitrarily)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("start", tag, repr(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.events.append(("startend", tag, repr(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self.events.append(("end", tag))

    def handle_data(self, data: str) -> None:
        if self.events and self.events[-1][0] == "data":
            data = self.events.pop()[1] + data
        self.events.append(("data", data))


class StdlibRecorder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.recorder = Recorder()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.recorder.handle_starttag(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.recorder.handle_startendtag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.recorder.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        self.recorder.handle_data(data)


def ours(html: str) -> list[Event]:
    recorder = Recorder()
    tokenize(html, recorder)
    return recorder.events


def stdlib(html: str) -> list[Event]:
    parser = StdlibRecorder()
    parser.feed(html)
    parser.close()
    return parser.recorder.events


TAGS = ["p", "div", "br", "b", "a", "blockquote", "li", "td", "pre", "script", "style", "title",
        "o:p", "DIV", "hr", "img"]
ATTRS = ['href="https://x.example/a?b=1&amp;c=2"', "class='gmail_quote'", "type=cite",
         "nowrap", 'alt="a > b"', "title='it&#39;s'", "HREF = 'u'", "a=b/", "x='1'y='2'",
         "data-x=\"a'b\"", "=odd", "c=", "D"]
TEXTS = ["Hello", " world ", "&amp;", "&nbsp;", "a < b", "x&gt;y", "\n", "&#8364;", "é", "AT&T",
         "&bogus;", "<3", "< p>"]
OTHER = ["<!-- c -->", "<!DOCTYPE html>", "<![if !supportLists]>", "<![endif]>", "<?xml x?>",
         "<br/>", "<br / >", "</>", "<a/b>", "<![CDATA[x]]>", "<!---->", "<p/>",
         "<script>if(a</scriptx>b)</script>", "<style>x</STYLE >"]


def document(rnd: random.Random, depth: int = 0) -> str:
    out = []
    for _ in range(rnd.randint(1, 5)):
        roll = rnd.random()
        if roll < 0.4 or depth > 3:
            out.append(rnd.choice(TEXTS))
        elif roll < 0.55:
            out.append(rnd.choice(OTHER))
        else:
            tag = rnd.choice(TAGS)
            attrs = "".join(" " + a for a in rnd.sample(ATTRS, rnd.randint(0, 2)))
            # Raw text runs to its end tag; html.parser holds back an unclosed one.
            raw = tag in ("script", "style")
            close = f"</{tag}>" if raw or rnd.random() < 0.8 else ""
            out.append(f"<{tag}{attrs}>{document(rnd, depth + 1)}{close}")
    return "".join(out)


@pytest.mark.parametrize("seed", range(4))
def test_same_tokens_as_html_parser_when_everything_is_closed(seed: int) -> None:
    """Tags, attributes, decoded text, skipped comments and raw script text as html.parser."""
    rnd = random.Random(seed)
    for _ in range(1200):
        html = document(rnd)
        assert ours(html) == stdlib(html), html


def test_attributes() -> None:
    """Lower-cased names, decoded values, None without "=", "" for an empty value."""
    assert ours("<A HREF='x&amp;y' Nowrap title=\"a > b\" c=>") == [
        ("start", "a", repr([("href", "x&y"), ("nowrap", None), ("title", "a > b"), ("c", "")])),
    ]


def test_self_closing_needs_the_slash_before_the_bracket() -> None:
    """<br/> closes itself; a slash that ends an unquoted value does not."""
    assert ours("<br/><a href=x/>")[0] == ("startend", "br", "[]")
    assert ours("<a href=x/>")[0] == ("start", "a", repr([("href", "x/")]))


def test_tag_open_at_the_end_is_dropped_like_a_browser_drops_it() -> None:
    """An unclosed quote runs to the end: the tag and what follows are not shown."""
    assert ours("<p>kept</p><div class='x>lost</div>") == [
        ("start", "p", "[]"), ("data", "kept"), ("end", "p"),
    ]


def test_text_that_only_looks_like_a_tag_stays_text() -> None:
    """With no ">" after it, "<b" was never markup: html.parser shows it, so do we."""
    assert ours("if (a<b) then") == [("data", "if (a<b) then")]
    assert ours("Hello <b") == [("data", "Hello <b")]


def test_comment_open_at_the_end_runs_to_the_end() -> None:
    """<!-- without --> hides the rest, as in a browser."""
    assert ours("a<!-- b <p>c") == [("data", "a")]
    assert ours("a<!-->b") == [("data", "ab")]


def test_end_tags_read_quotes_and_bogus_comments_like_a_browser() -> None:
    """A quoted ">" does not end an end tag; "</ p>" is a comment, not an end tag."""
    assert ours("<p>x</p a='>'>y") == [
        ("start", "p", "[]"), ("data", "x"), ("end", "p"), ("data", "y"),
    ]
    assert ours("<p>x</ p>y") == [("start", "p", "[]"), ("data", "xy")]


def test_script_content_is_raw_up_to_its_end_tag() -> None:
    """Markup and references inside <script> are text, up to </script>."""
    assert ours("<script>a<b>&amp;</script>c") == [
        ("start", "script", "[]"), ("data", "a<b>&amp;"), ("end", "script"), ("data", "c"),
    ]


@pytest.mark.parametrize(
    "html", ["<a " * 2500, "<a b='" * 2000, "<!--" * 8000, "<" * 3000, "</" * 3000, "<!" * 3000]
)
def test_unclosed_constructs_give_at_most_the_input_back(html: str) -> None:
    """Hostile shapes come back as bounded text or nothing (their time is in tests/hostile)."""
    events = ours(html)
    assert all(kind == "data" for kind, *_ in events)
    assert sum(len(e[1]) for e in events) <= len(html)
