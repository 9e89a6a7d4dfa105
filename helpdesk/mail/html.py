"""Render mail HTML as readable plain text; a pure function that never raises.

`html_to_text(html)` renders the tokens of `helpdesk.mail.htmltokens`
(linear on any input, where the standard library's `html.parser` is
quadratic on unclosed constructs; see there). It skips script, style and
head; turns block elements into line breaks and paragraphs into blank-line
separated blocks; writes lists as "- item" / "1. item", links as "text
(url)" when the text is not the url, and table rows one per line with " | "
between cells; collapses runs of whitespace; and keeps at most one blank
line in a row.

Quoted history is rendered as "> "-prefixed lines (nested quotes as "> > ")
so that `helpdesk.mail.quoting.split_reply` can cut it like a plain-text
quote: `<blockquote>` (Apple's and Thunderbird's `type="cite"` included),
Gmail's `gmail_quote` container, Yahoo's `yahoo_quoted`, Thunderbird's
`moz-cite-prefix` attribution, and Outlook's reply header (`divRplyFwdMsg`,
or the `border-top` styled div of Outlook desktop) after which everything up
to the end of the document is the quoted original.

The output is at most a constant factor longer than the input: quote markers
stop at `_MAX_QUOTE_DEPTH` levels ("> " ten times) and list indentation at
`_MAX_LIST_INDENT`, so that thousands of nested blockquotes or lists cannot
turn each line into kilobytes of markers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from helpdesk.mail.htmltokens import tokenize

__all__ = ["html_to_text"]

_SKIP = frozenset(
    {"script", "style", "head", "title", "template", "svg", "math", "object", "iframe", "xml"}
)
_VOID = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "param", "source", "track", "wbr", "frame", "basefont", "keygen",
    }
)  # fmt: skip
# Elements separated from their neighbours by a blank line.
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "hr", "dl", "figure"}
)
# Elements that start and end on a line of their own.
_BLOCK = frozenset(
    {
        "div", "li", "tr", "dt", "dd", "address", "article", "section", "header", "footer",
        "nav", "aside", "form", "fieldset", "main", "center", "caption", "figcaption",
        "body", "html", "legend", "details", "summary", "thead", "tbody", "tfoot",
    }
)  # fmt: skip
_CELL = frozenset({"td", "th"})
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix")
# Outlook's reply/forward header; the original message follows it as siblings.
_OUTLOOK_IDS = frozenset(
    {"divrplyfwdmsg", "mail-editor-reference-message-container", "olk_src_body_section"}
)
# How far up the open-element stack an end tag looks for its start tag: an
# end tag closes nothing that was opened more than this many elements ago.
_MAX_STACK_SEARCH = 200
# Rendered nesting: deeper quotes get as many markers as this, deeper lists
# this indentation; split_reply needs only the first level.
_MAX_QUOTE_DEPTH = 10
_MAX_LIST_INDENT = 10

_WS_RE = re.compile(r"\s+")
_INVISIBLE_RE = re.compile("[\u200b\ufeff\u00ad]")


@dataclass
class _Open:
    """An open element and what it changed, to be undone when it closes."""

    tag: str
    quote: bool = False
    skip: bool = False
    pre: bool = False
    list: bool = False
    link: bool = False
    paragraph: bool = False
    block: bool = False


@dataclass
class _Link:
    href: str
    words: list[str] = field(default_factory=list)


@dataclass
class _List:
    ordered: bool
    counter: int


def html_to_text(html: str) -> str:
    """Return `html` as readable text; never raises (broken HTML gives what was read)."""
    if not html:
        return ""
    renderer = _Renderer()
    tokenize(html, renderer)
    return renderer.result()


class _Renderer:
    """Collects lines of (quote depth, text) while the tokenizer walks the markup."""

    def __init__(self) -> None:
        self._lines: list[tuple[int, str]] = []
        self._cur: list[str] = []
        self._cur_depth = 0
        self._depth = 0
        self._pending = 0  # 1: line break owed, 2: blank line owed
        self._space = False
        self._marker = ""  # list item marker for the next line
        self._stack: list[_Open] = []
        # Stack indexes of the open elements, by tag: an end tag finds its start at once.
        self._open_at: defaultdict[str, list[int]] = defaultdict(list)
        self._skip = 0
        self._pre = 0
        self._lists: list[_List] = []
        self._links: list[_Link] = []
        self._cells = 0
        self._rest_quoted = False

    # -- output -----------------------------------------------------------

    def result(self) -> str:
        self._push_line()
        out: list[str] = []
        blank = True  # suppresses leading blank lines
        for depth, text in self._lines:
            markers = "> " * min(depth, _MAX_QUOTE_DEPTH)
            if not text.strip():
                if not blank:
                    out.append(markers.rstrip())
                blank = True
                continue
            out.append((markers + text).rstrip())
            blank = False
        while out and not out[-1].strip("> "):
            out.pop()
        return "\n".join(out)

    def _push_line(self) -> None:
        if self._cur:
            self._lines.append((self._cur_depth, "".join(self._cur)))
            self._cur = []
        self._space = False

    def _break(self, kind: int) -> None:
        self._pending = max(self._pending, kind)

    def _resolve_pending(self) -> None:
        if not self._pending:
            return
        had_text = bool(self._cur)
        self._push_line()
        if self._pending == 2 and (had_text or self._lines):
            previous = self._lines[-1][0] if self._lines else 0
            self._lines.append((min(previous, self._depth), ""))
        self._pending = 0

    def _start_line(self) -> None:
        self._cur_depth = self._depth
        if self._marker:
            self._cur.append(self._marker)
            self._marker = ""

    def _words(self, words: str, space_before: bool) -> None:
        self._resolve_pending()
        if not self._cur:
            self._start_line()
        elif space_before or self._space:
            self._cur.append(" ")
        self._cur.append(words)
        self._space = False
        if self._links:
            self._links[-1].words.append(words)

    # -- parser callbacks -------------------------------------------------

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        data = _INVISIBLE_RE.sub("", data)
        if self._pre:
            self._pre_data(data)
            return
        text = _WS_RE.sub(" ", data)
        if not text:
            return
        words = text.strip()
        if not words:
            if self._cur:
                self._space = True
            return
        self._words(words, space_before=text[0] == " ")
        self._space = text[-1] == " "

    def _pre_data(self, data: str) -> None:
        """Inside <pre> whitespace and line breaks are the author's."""
        chunks = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for number, chunk in enumerate(chunks):
            if number:
                if self._cur:
                    self._push_line()
                else:
                    self._lines.append((self._depth, ""))
            if chunk:
                self._resolve_pending()
                if not self._cur:
                    self._start_line()
                self._cur.append(chunk.replace("\t", "    "))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._close_named("head")
        if tag in _VOID:
            self._void(tag, attrs)
            return
        entry = _Open(tag)
        values = {name: (value or "") for name, value in attrs}
        if tag in _SKIP:
            entry.skip = True
            self._skip += 1
        elif not self._skip:
            self._open_effects(entry, values)
        self._open_at[tag].append(len(self._stack))
        self._stack.append(entry)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            self._void(tag, attrs)
        # A self-closed <div/> or <p/> is an empty element: nothing to render.

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if not self._close_named(tag) and tag == "p" and not self._skip:
            # A stray </p> is an empty paragraph in browsers.
            self._break(2)

    # -- element effects --------------------------------------------------

    def _void(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            return
        if tag == "br":
            self._resolve_pending()
            if self._cur:
                self._push_line()
            else:
                self._lines.append((self._depth, ""))
        elif tag == "hr":
            self._break(2)
            if self._outlook_header(dict((k, v or "") for k, v in attrs)):
                self._quote_rest()

    def _open_effects(self, entry: _Open, attrs: dict[str, str]) -> None:
        tag = entry.tag
        if self._outlook_header(attrs):
            self._quote_rest()
        if tag == "blockquote":
            style = attrs.get("style", "").replace(" ", "").lower()
            # Gmail and Outlook use a borderless blockquote for "indent more";
            # that is the writer's own text, not a quote.
            entry.quote = not ("border:none" in style and "margin" in style)
            entry.paragraph = True
            self._break(2)
        elif any(name in attrs.get("class", "") for name in _QUOTE_CLASSES):
            entry.quote = True
        if entry.quote:
            self._break(2)
            self._depth += 1
        if tag in _PARAGRAPH or tag in ("ul", "ol"):
            nested_in_list = bool(self._lists) and tag in ("p", "ul", "ol")
            entry.paragraph = not nested_in_list
            entry.block = nested_in_list
            self._break(1 if nested_in_list else 2)
        elif tag in _BLOCK:
            entry.block = True
            self._break(1)
        if tag == "pre":
            entry.pre = True
            self._pre += 1
        elif tag in ("ul", "ol"):
            entry.list = True
            self._lists.append(_List(tag == "ol", _list_start(attrs) - 1))
        elif tag == "li":
            self._list_item()
        elif tag == "tr":
            self._cells = 0
        elif tag in _CELL:
            if self._cells and self._cur:
                self._cur.append(" | ")
                self._space = False
            self._cells += 1
        elif tag == "a" and attrs.get("href"):
            entry.link = True
            self._links.append(_Link(attrs["href"].strip()))

    def _list_item(self) -> None:
        indent = "  " * min(max(len(self._lists) - 1, 0), _MAX_LIST_INDENT)
        if self._lists and self._lists[-1].ordered:
            self._lists[-1].counter += 1
            self._marker = f"{indent}{self._lists[-1].counter}. "
        else:
            self._marker = f"{indent}- "

    def _outlook_header(self, attrs: dict[str, str]) -> bool:
        if self._rest_quoted:
            return False
        if attrs.get("id", "").lower() in _OUTLOOK_IDS:
            return True
        style = attrs.get("style", "").replace(" ", "").lower()
        # Outlook desktop: <div style="border:none;border-top:solid #E1E1E1 1.0pt;...">
        return "border:none" in style and "border-top:solid" in style

    def _quote_rest(self) -> None:
        """From Outlook's reply header to the end, everything is the quoted original."""
        self._rest_quoted = True
        self._break(2)
        self._depth += 1

    def _close_named(self, tag: str) -> bool:
        """Close the innermost open `tag` and everything opened inside it.

        Nothing opened more than `_MAX_STACK_SEARCH` elements ago is closed:
        broken HTML (thousands of unclosed tags) must not make one stray end
        tag close everything.
        """
        opened = self._open_at.get(tag)
        if not opened or opened[-1] < len(self._stack) - _MAX_STACK_SEARCH:
            return False
        index = opened[-1]
        while len(self._stack) > index:
            entry = self._stack.pop()
            self._open_at[entry.tag].pop()
            self._undo(entry)
        return True

    def _undo(self, entry: _Open) -> None:
        if entry.skip:
            self._skip -= 1
            return
        if entry.link:
            self._finish_link()
        if entry.list and self._lists:
            self._lists.pop()
        if entry.pre:
            self._pre -= 1
        if entry.quote:
            self._break(2)
            self._depth = max(self._depth - 1, 0)
        if entry.paragraph:
            self._break(2)
        elif entry.block:
            self._break(1)

    def _finish_link(self) -> None:
        if not self._links:
            return
        link = self._links.pop()
        text = " ".join(link.words).strip()
        shown = _shown_href(link.href, text)
        if shown:
            self._words(f"({shown})", space_before=True)


def _list_start(attrs: dict[str, str]) -> int:
    try:
        return int(attrs.get("start", "1"))
    except ValueError:
        return 1


def _shown_href(href: str, text: str) -> str | None:
    """The url to show after a link's text, or None when it adds nothing."""
    lowered = href.lower()
    if not text or lowered.startswith(("#", "javascript:", "cid:", "data:", "about:")):
        return None
    target = href[7:] if lowered.startswith("mailto:") else href

    def bare(value: str) -> str:
        value = value.strip().lower()
        for prefix in ("https://", "http://", "mailto:"):
            if value.startswith(prefix):
                value = value[len(prefix) :]
        return value.rstrip("/")

    if bare(target) == bare(text):
        return None
    return target
