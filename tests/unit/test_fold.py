"""Our own header folding: RFC 2047 encoded-words, folds at white space, exact round trips."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.header import decode_header, make_header
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from helpdesk.mail.fold import fold_addresses, fold_ids, fold_parameters, fold_unstructured
from helpdesk.mail.parse.mime import split_params

# Every encoded-word we write: utf-8, Q or B, a non-empty payload without white space.
EW_RE = re.compile(r"=\?utf-8\?([qb])\?([^?\s]+)\?=")
ANY_EW_RE = re.compile(r"=\?[^?]*\?[^?]*\?[^?]*\?=")

# Text compose accepts: anything but C0 controls other than TAB, DEL and lone surrogates.
HEADER_TEXT = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs",),
        exclude_characters="".join(chr(c) for c in range(32) if c != 9) + "\x7f",
    ),
    max_size=300,
)
# Words and white space that make folding interesting: long runs, tabs, lookalikes of
# encoded-words, emoji, combining marks, CJK, right-to-left text.
PIECES = st.sampled_from([
    " ", "  ", "\t", " \t ", " " * 45, "a", "Ärger", "–", "😀", "👩‍💻", "=?", "?=",
    "=?utf-8?q?x?=", "_", "x" * 90, "日本語", "שלום", "e\u0301", "\u00a0", "\u2028", "(", '"',
])
PIECED = st.lists(PIECES, max_size=40).map("".join)


def unfolded_lines(header: str) -> list[str]:
    assert header.endswith("\r\n")
    return header[:-2].split("\r\n")


def check_encoded_words(header: str) -> None:
    """Every encoded-word is one of ours: non-empty, at most 75 long, whole UTF-8 characters."""
    assert len(ANY_EW_RE.findall(header)) == len(EW_RE.findall(header))
    for match in EW_RE.finditer(header):
        assert len(match.group(0)) <= 75
        kind, payload = match.groups()
        if kind == "b":
            raw = __import__("base64").b64decode(payload, validate=True)
        else:
            raw = re.sub(r"=([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)),
                         payload.replace("_", " ")).encode("latin-1")
        assert raw  # RFC 2047 section 2: at least one encoded character
        raw.decode("utf-8")  # whole characters: each word decodes on its own


def parsed_header(header: str, name: str) -> object:
    msg = email.message_from_bytes(header.encode("ascii") + b"\r\n", policy=email.policy.default)
    value = msg[name]
    assert value is not None
    assert value.defects == ()
    return value


# --------------------------------------------------------------------------
# Unstructured: Subject, Thread-Topic


@settings(max_examples=400, deadline=None)
@given(st.one_of(HEADER_TEXT, PIECED))
@example("Ärger mit dem Drucker – ÄÖÜ Ünïcödé 😀 emoji 🎉 " * 3)
@example(" leading and trailing ")
@example("")
@example("\t")
def test_unstructured_round_trips_exactly(text: str) -> None:
    """Any text decodes back to itself with email.policy.default; lines are at most 76."""
    header = fold_unstructured("Subject", text)

    assert header.isascii()
    assert all(len(line) <= 76 for line in unfolded_lines(header))
    assert all(line.strip(" \t") for line in unfolded_lines(header))  # no white-space-only line
    check_encoded_words(header)
    assert str(parsed_header(header, "Subject")) == text


def test_short_ascii_subject_is_written_as_it_is() -> None:
    """The common case is one plain line."""
    assert fold_unstructured("Subject", "Re: [#42] VPN drops every hour") == (
        "Subject: Re: [#42] VPN drops every hour\r\n"
    )


def test_space_before_an_emoji_is_kept_inside_the_encoded_word() -> None:
    """Issue 10 item 4: the stdlib dropped the space before an emoji and wrote empty words."""
    text = "[#42] Drucker – Papierstau im 3. Stock, Fach 2 klemmt 😀 bitte dringend prüfen"

    header = fold_unstructured("Subject", text)

    assert header == (
        "Subject: [#42] Drucker =?utf-8?b?4oCT?= Papierstau im 3. Stock, Fach 2\r\n"
        " klemmt =?utf-8?b?8J+YgA==?= bitte dringend =?utf-8?q?pr=C3=BCfen?=\r\n"
    )
    assert "?q??=" not in header
    assert str(parsed_header(header, "Subject")) == text


def test_adjacent_encoded_words_carry_the_space_between_them() -> None:
    """Two neighbouring non-ASCII words are one run: the space is encoded, never dropped."""
    header = fold_unstructured("Subject", "Grüße 😀 aus Köln")

    assert header == "Subject: =?utf-8?b?R3LDvMOfZSDwn5iA?= aus =?utf-8?q?K=C3=B6ln?=\r\n"
    assert str(parsed_header(header, "Subject")) == "Grüße 😀 aus Köln"


def test_long_word_is_encoded_so_that_it_can_fold() -> None:
    """A word longer than a line is split into encoded-words of whole characters."""
    header = fold_unstructured("Subject", "x" * 200)

    assert all(len(line) <= 76 for line in unfolded_lines(header))
    assert len(EW_RE.findall(header)) == 4  # 55 + 63 + 63 + 19 characters
    assert str(parsed_header(header, "Subject")) == "x" * 200


def test_text_that_looks_like_an_encoded_word_is_encoded() -> None:
    """A literal `=?...?=` would be decoded by readers: it is encoded itself."""
    header = fold_unstructured("Subject", "see =?utf-8?q?hi?= here")

    assert str(parsed_header(header, "Subject")) == "see =?utf-8?q?hi?= here"


def test_long_white_space_is_encoded_not_folded_into_a_blank_line() -> None:
    """A run of 100 spaces would need a line of white space only: it travels encoded."""
    text = "a" + " " * 100 + "b"

    header = fold_unstructured("Subject", text)

    assert all(line.strip() for line in unfolded_lines(header))
    assert str(parsed_header(header, "Subject")) == text


def test_lone_surrogates_become_replacement_characters() -> None:
    """A str that cannot be UTF-8 still gives a header (U+FFFD in its place)."""
    header = fold_unstructured("Subject", "bad \udcff byte")

    assert str(parsed_header(header, "Subject")) == "bad \ufffd byte"


# --------------------------------------------------------------------------
# Display names


def decoded_display_names(header: str, name: str) -> list[str]:
    """Display names as an RFC 2047 section 6.2 decoder reads them.

    email.policy.default keeps white space between adjacent encoded-words of a
    display name (contrary to section 6.2), so encoded names are decoded with
    email.header.decode_header, which drops it as mail clients do.
    """
    value = parsed_header(header, name)
    names = []
    for address, raw in zip(value.addresses, split_raw_mailboxes(header), strict=True):  # type: ignore[attr-defined]
        if EW_RE.search(raw):
            phrase = raw.rsplit("<", 1)[0].strip(" \t")  # the separator before "<"
            names.append(str(make_header(decode_header(phrase))))
        else:
            names.append(address.display_name)
    return names


def split_raw_mailboxes(header: str) -> list[str]:
    """The raw text of each mailbox of a header we wrote (commas only follow '>' or an addr)."""
    body = header.split(":", 1)[1].replace("\r\n", "")
    return [part.strip() for part in re.split(r"(?<=>),|(?<=\.com),", body)]


@settings(max_examples=300, deadline=None)
@given(st.one_of(HEADER_TEXT, PIECED))
@example("Александр Сергеевич Пушкин-Задунайский Третий")
@example('Pat "The Admin" O\'Brien')
@example("Jörg Müller, IT-Service (Hilfe)")
@example(" ")
def test_display_names_round_trip_exactly(name: str) -> None:
    """Any display name decodes back to itself; lines are at most 76."""
    header = fold_addresses("To", [(name, "dana@example.com"), ("Dana Scully", "d@example.com")])

    assert header.isascii()
    assert all(len(line) <= 76 for line in unfolded_lines(header))
    check_encoded_words(header)
    names = decoded_display_names(header, "To")
    assert names == [name, "Dana Scully"] if name else names == ["", "Dana Scully"]
    value = parsed_header(header, "To")
    assert [a.addr_spec for a in value.addresses] == [  # type: ignore[attr-defined]
        "dana@example.com", "d@example.com"]
    if len(EW_RE.findall(header)) <= 1 and re.fullmatch(r"\S+( \S+)*", name):
        # Without adjacent encoded-words and runs of white space the standard
        # library agrees too (see the note in helpdesk.mail.fold).
        assert value.addresses[0].display_name == name  # type: ignore[attr-defined]
    if name.isascii() and len(name) <= 64 and "=?" not in name:
        assert value.addresses[0].display_name == name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("Dana Scully", "To: Dana Scully <dana@example.com>\r\n"),
        ("", "To: dana@example.com\r\n"),
        ("Dr. Who", 'To: "Dr. Who" <dana@example.com>\r\n'),
        ('Pat "The Admin"', 'To: "Pat \\"The Admin\\"" <dana@example.com>\r\n'),
        ("Jörg Müller", "To: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <dana@example.com>\r\n"),
    ],
)
def test_display_name_forms(name: str, written: str) -> None:
    """Atoms, bare address, quoted-string, encoded-words: the exact bytes."""
    assert fold_addresses("To", [(name, "dana@example.com")]) == written


def test_a_name_that_fits_one_encoded_word_is_not_split() -> None:
    """A name that fits one encoded-word starts a new line rather than splitting."""
    header = fold_addresses("Cc", [("Dana Scully", "dana.scully@example.com"),
                                   ("Équipe réseau et télécoms", "reseau@example.com")])

    assert header == (
        "Cc: Dana Scully <dana.scully@example.com>,\r\n"
        " =?utf-8?q?=C3=89quipe_r=C3=A9seau_et_t=C3=A9l=C3=A9coms?=\r\n"
        " <reseau@example.com>\r\n"
    )
    value = parsed_header(header, "Cc")
    assert value.addresses[1].display_name == "Équipe réseau et télécoms"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# msg-id lists

DOT_ATOM = st.from_regex(r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,40}(\.[a-zA-Z0-9_-]{1,20}){0,2}",
                         fullmatch=True)
MSG_ID = st.builds(lambda left, right: f"{left}@{right}", DOT_ATOM,
                   st.from_regex(r"[a-z0-9-]{1,30}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True))


@settings(max_examples=200, deadline=None)
@given(st.lists(MSG_ID, min_size=1, max_size=30))
def test_ids_fold_between_ids_and_parse_back(ids: list[str]) -> None:
    """Folded between ids only: every line holds whole ids; the ids parse back in order."""
    header = fold_ids("References", ids)

    lines = unfolded_lines(header)
    for line in lines:
        assert len(line) <= 76 or len(line.split()) == 1 or line == lines[0]
    msg = email.message_from_bytes(header.encode() + b"\r\n", policy=email.policy.default)
    assert re.findall(r"<([^>]+)>", str(msg["References"])) == ids


def test_long_outlook_id_folds_after_the_colon() -> None:
    """Issue 10 item 5: `In-Reply-To: <id>` of 87 characters folds after the colon (Outlook)."""
    outlook = "AM0PR04MB6433A1B2C3D4E5F6A7B8C9D@AM0PR04MB6433.eurprd04.prod.outlook.com"

    assert fold_ids("In-Reply-To", [outlook]) == f"In-Reply-To:\r\n <{outlook}>\r\n"
    assert fold_ids("References", ["root@x.example", outlook]) == (
        f"References: <root@x.example>\r\n <{outlook}>\r\n"
    )


# --------------------------------------------------------------------------
# MIME parameters (attachment file names)

FILE_NAMES = st.lists(st.sampled_from([
    "a", "report", ".pdf", " ", "\t", '"', "\\", ";", "=", "'", "%", "*", "(", ")", "@",
    "ä", "März", "Отчёт", "日本語", "😀", "e\u0301", "x" * 70,
]), max_size=30).map("".join)


def disposition_filename(header: str) -> str | None:
    """The file name as the standard library reads the folded header back."""
    msg = email.message_from_string(header + "\r\n", policy=email.policy.default)
    return msg.get_filename()


def stdlib_reading(name: str) -> str:
    """What the standard library's reader makes of a file name we wrote whole.

    It unquotes the value once more after reading it, whatever its encoding (a
    quoted-string or RFC 2231), so a name within double quotes loses them there though
    the header carries them (our own reader, `split_params`, keeps them); then it trims
    white space.
    """
    return email.utils.unquote(name).strip(" \t")


@given(FILE_NAMES)
@settings(max_examples=300)
@example("Rechnung März.pdf")
@example("😀" * 40)
@example('""')
@example('"a"')
@example(' ""')
@example('"\\"')
def test_file_names_round_trip_and_fold(name: str) -> None:
    """Any file name comes back whole; lines stay within 76 characters; a long name is cut
    into RFC 2231 continuations between characters, so each piece decodes on its own."""
    header = fold_parameters("Content-Disposition", "attachment", [("filename", name)])
    lines = unfolded_lines(header)
    assert all(len(line) <= 76 for line in lines)
    assert header.isascii()
    _, params = split_params(header.split(":", 1)[1].replace("\r\n", ""))
    assert params["filename"] == name
    assert disposition_filename(header) == stdlib_reading(name)
    for piece in re.findall(r"filename\*\d+\*=(?:utf-8'')?([^;\s]+)", header):
        unquote_to_bytes(piece).decode("utf-8")  # raises if a character was cut in two


@pytest.mark.parametrize(("name", "written"), [
    ("report.pdf", 'Content-Disposition: attachment; filename="report.pdf"\r\n'),
    ('a "b"\\c.txt', 'Content-Disposition: attachment; filename="a \\"b\\"\\\\c.txt"\r\n'),
    ("März.pdf", "Content-Disposition: attachment; filename*=utf-8''M%C3%A4rz.pdf\r\n"),
    ("tab\there", "Content-Disposition: attachment; filename*=utf-8''tab%09here\r\n"),
])
def test_file_name_forms(name: str, written: str) -> None:
    """Printable ASCII is a quoted-string; anything else RFC 2231 percent-encoding."""
    assert fold_parameters("Content-Disposition", "attachment", [("filename", name)]) == written


def test_a_file_name_with_lone_surrogates_is_still_written() -> None:
    """Bytes a broken mail's name could not decode become U+FFFD, not a crash."""
    header = fold_parameters("Content-Disposition", "attachment", [("filename", "a\udcff.txt")])
    assert header == "Content-Disposition: attachment; filename*=utf-8''a%EF%BF%BD.txt\r\n"


def test_no_parameters_is_the_bare_value() -> None:
    assert fold_parameters("Content-Disposition", "inline", []) == "Content-Disposition: inline\r\n"
