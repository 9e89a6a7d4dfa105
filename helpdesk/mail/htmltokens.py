"""A tokenizer for mail HTML that reads every character once.

`tokenize(html, sink)` calls the sink's `handle_starttag`, `handle_startendtag`,
`handle_endtag` and `handle_data` (the callbacks of the standard library's
`html.parser.HTMLParser`, so that a renderer written for one works with the
other) and skips comments, doctypes, CDATA sections and processing
instructions. It is pure and never raises.

Why not `html.parser`: on Python 3.11 it is quadratic on constructs that are
never closed. At the end of the input it hands an unclosed tag, quoted value
or comment over as text one piece at a time and rescans the rest of the
input for each piece (`"<a " * 25000`, `"<a b='" * 20000` and `"<!--" *
80000` took over 45 s for 75 KB). Here the position only moves forward.

What comes out is what `html.parser` gives on the same input (names
lower-cased, character references decoded in text and attribute values, an
attribute without `=` has the value None, `<script>` and `<style>` hold raw
text up to their end tag, a `<` that starts no tag is text), except where
the HTML standard's tokenizer (WHATWG HTML section 13.2.5), and so every
browser, reads it differently:

* a tag still open at the end of the input ends the input: dropped, like a
  browser drops it; but with no `>` anywhere after it (`if a<b`) it was never
  markup, and it stays text, as `html.parser` has it;
* a comment still open at the end runs to the end; `<!-->` is an empty comment;
* a quoted `>` inside an end tag (`</p x='>'>`) does not end it, and `</ p>`
  is a bogus comment, not an end tag.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Protocol

__all__ = ["TokenSink", "tokenize"]

Attrs = list[tuple[str, str | None]]

# HTML white space (WHATWG: tab, LF, FF, space; CR as the input stream leaves it).
_WS = "\t\n\f\r "
_TAG_NAME_RE = re.compile(rf"[^{_WS}/>]*")
# Between attributes: white space, and slashes that do not close the tag.
_GAP_RE = re.compile(rf"[{_WS}/]*")
# One attribute after the gap before it: a name, and maybe "=" and a value
# that is quoted (the closing quote may be missing: the input then ends
# inside the tag) or runs to white space or ">". One match per attribute.
_ATTR_RE = re.compile(
    rf"""[{_WS}/]*
    (?P<name>[^{_WS}/>][^{_WS}/=>]*)
    (?:[{_WS}]*=[{_WS}]*(?P<value>"[^"]*"?|'[^']*'?|[^{_WS}>]*))?""",
    re.VERBOSE,
)
# Elements whose content is raw text up to their end tag, as html.parser has them.
_RAW_TEXT = frozenset({"script", "style"})
_RAW_END = {name: re.compile(rf"</{name}[{_WS}/>]", re.IGNORECASE) for name in _RAW_TEXT}


def _skip(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where a run of `pattern` (which may match nothing) starting at `pos` ends."""
    match = pattern.match(text, pos)
    return match.end() if match else pos


class TokenSink(Protocol):
    """What `tokenize` calls; the names and arguments of html.parser's callbacks."""

    def handle_starttag(self, tag: str, attrs: Attrs) -> None: ...

    def handle_startendtag(self, tag: str, attrs: Attrs) -> None: ...

    def handle_endtag(self, tag: str) -> None: ...

    def handle_data(self, data: str) -> None: ...


def tokenize(html: str, sink: TokenSink) -> None:
    """Call `sink` for each tag and each run of text of `html`, in order."""
    _Tokenizer(html, sink).run()


class _Tokenizer:
    def __init__(self, html: str, sink: TokenSink) -> None:
        self.html = html
        self.sink = sink
        self.text: list[str] = []  # text not yet handed over: references decode at once

    def run(self) -> None:
        html, end = self.html, len(self.html)
        pos = 0
        while pos < end:
            lt = html.find("<", pos)
            if lt < 0:
                self.text.append(html[pos:])
                break
            if lt > pos:
                self.text.append(html[pos:lt])
            pos = self._markup(lt)
        self._flush()

    def _flush(self) -> None:
        if self.text:
            data = unescape("".join(self.text))
            self.text = []
            if data:
                self.sink.handle_data(data)

    def _markup(self, lt: int) -> int:
        """Read what starts with the "<" at `lt`; returns where the text goes on."""
        html = self.html
        following = html[lt + 1 : lt + 2]
        if following.isascii() and following.isalpha():
            return self._start_tag(lt)
        if following == "/":
            after = html[lt + 2 : lt + 3]
            if after.isascii() and after.isalpha():
                return self._end_tag(lt)
            if after == ">":
                return lt + 3  # "</>" is nothing
            return self._bogus_comment(lt + 2)
        if following == "!":
            if html.startswith("<!--", lt):
                return self._comment(lt + 4)
            return self._bogus_comment(lt + 2)  # doctype, <![CDATA[, Word's <![if ...]>
        if following == "?":
            return self._bogus_comment(lt + 2)
        self.text.append("<")
        return lt + 1

    def _comment(self, start: int) -> int:
        html = self.html
        if html.startswith(">", start):
            return start + 1  # "<!-->"
        if html.startswith("->", start):
            return start + 2  # "<!--->"
        close = html.find("-->", start)
        return len(html) if close < 0 else close + 3

    def _bogus_comment(self, start: int) -> int:
        close = self.html.find(">", start)
        return len(self.html) if close < 0 else close + 1

    def _start_tag(self, lt: int) -> int:
        name_end = _skip(_TAG_NAME_RE, self.html, lt + 1)
        tag = self.html[lt + 1 : name_end].lower()
        read = self._attributes(name_end)
        if read is None:
            return self._unclosed(lt)
        attrs, self_closing, after = read
        self._flush()
        if self_closing:
            self.sink.handle_startendtag(tag, attrs)
            return after
        self.sink.handle_starttag(tag, attrs)
        if tag in _RAW_TEXT:
            return self._raw_text(tag, after)
        return after

    def _end_tag(self, lt: int) -> int:
        name_end = _skip(_TAG_NAME_RE, self.html, lt + 2)
        tag = self.html[lt + 2 : name_end].lower()
        read = self._attributes(name_end)  # an end tag may carry junk; it is read and ignored
        if read is None:
            return self._unclosed(lt)
        self._flush()
        self.sink.handle_endtag(tag)
        return read[2]

    def _unclosed(self, lt: int) -> int:
        """A tag still open at the end of the input ends the input. With no ">"
        after it, it was text all along ("if a<b"), as html.parser shows it;
        else it is dropped with the rest, as a browser drops it."""
        if self.html.find(">", lt) < 0:
            self.text.append(self.html[lt:])
        return len(self.html)

    def _raw_text(self, tag: str, start: int) -> int:
        """The content of <script> or <style>, as it is, up to the end tag."""
        close = _RAW_END[tag].search(self.html, start)
        stop = len(self.html) if close is None else close.start()
        if stop > start:
            self.sink.handle_data(self.html[start:stop])
        return stop if close is None else self._end_tag(stop)

    def _attributes(self, pos: int) -> tuple[Attrs, bool, int] | None:
        """The attributes from `pos` to the tag's ">": (attrs, self-closing, after
        the ">"), or None when the input ends first."""
        html = self.html
        attrs: Attrs = []
        while True:
            attr = _ATTR_RE.match(html, pos)
            if attr is None:
                break
            name, value = attr.group("name").lower(), attr.group("value")
            if value is None:
                attrs.append((name, None))
            elif value[:1] in ("'", '"'):
                if len(value) < 2 or value[-1] != value[0]:
                    return None  # the quote is never closed
                attrs.append((name, unescape(value[1:-1])))
            else:
                attrs.append((name, unescape(value)))
            pos = attr.end()
        gap = _skip(_GAP_RE, html, pos)
        if gap >= len(html):
            return None
        # Not an attribute and not the end of the input: the ">". "/>" closes
        # the element, a slash that ends an unquoted value does not.
        return attrs, gap > pos and html[gap - 1] == "/", gap + 1
