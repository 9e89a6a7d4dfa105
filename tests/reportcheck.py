"""Checks of an HTML report shared by the unit and the CLI tests.

`check_page` parses the page with html5lib in strict mode (any HTML parse
error fails) and checks the promises of a self-contained report: no script,
no event handler, no reference to anything outside the file, every SVG
well-formed XML on its own. `tables` reads the figure tables back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import html5lib

SVG = "{http://www.w3.org/2000/svg}"
_SVG_ELEMENT = re.compile(r"<svg\b.*?</svg>", re.DOTALL)
# Attributes that load or link something, in HTML and SVG.
_REFERENCES = {"src", "href", "srcset", "action", "formaction", "poster", "background",
               "data", "codebase", "ping", "{http://www.w3.org/1999/xlink}href"}


@dataclass(frozen=True)
class Cell:
    text: str
    value: str | None  # the `<data value>`, when the cell holds a figure


def check_page(page: str) -> ET.Element:
    """The parsed page, after every structural promise was checked."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    tree = parser.parse(page)   # raises html5lib.html5parser.ParseError on any error
    assert page.startswith("<!DOCTYPE html>")
    for el in tree.iter():
        tag = el.tag if isinstance(el.tag, str) else ""
        assert tag.rpartition("}")[2] not in {"script", "iframe", "object", "embed", "img",
                                              "link", "base", "foreignObject", "image",
                                              "use"}, tag
        for name in el.attrib:
            assert not name.lower().startswith("on"), (tag, name)
            assert name not in _REFERENCES, (tag, name, el.attrib[name])
        assert not (tag == "meta" and "http-equiv" in el.attrib), el.attrib
    styles = " ".join([el.text or "" for el in tree.iter("style")]
                      + [el.attrib.get("style", "") for el in tree.iter()])
    assert "url(" not in styles
    assert "@import" not in styles
    svgs = _SVG_ELEMENT.findall(page)
    assert len(svgs) == len(list(tree.iter(f"{SVG}svg")))
    for markup in svgs:
        root = ET.fromstring(markup)   # well-formed XML on its own
        assert root.find(f"{SVG}title") is not None
        assert root.find(f"{SVG}desc") is not None
    return tree


def text(el: ET.Element) -> str:
    return "".join(el.itertext())


def tables(tree: ET.Element) -> dict[str, list[list[Cell]]]:
    """Every table with an id: its body rows, each cell's text and data value."""
    found: dict[str, list[list[Cell]]] = {}
    for table in tree.iter("table"):
        rows = []
        for tr in table.iter("tr"):
            if tr.find("th") is not None:
                continue
            cells = []
            for td in tr.findall("td"):
                data = td.find("data")
                cells.append(Cell(text(td), data.get("value") if data is not None else None))
            rows.append(cells)
        found[table.get("id", "")] = rows
    return found


def headers(tree: ET.Element, table_id: str) -> list[str]:
    table = next(t for t in tree.iter("table") if t.get("id") == table_id)
    return [text(th) for th in table.iter("th")]


def svg_titles(tree: ET.Element, chart_id: str) -> list[str]:
    """The titles of the bars and dots of one chart, in drawing order."""
    chart = next(s for s in tree.iter(f"{SVG}svg")
                 if (s.get("aria-labelledby") or "").startswith(f"{chart_id}-title"))
    return [text(t) for el in chart.iter() if el.tag in (f"{SVG}rect", f"{SVG}circle")
            for t in el.findall(f"{SVG}title")]
