"""split_reply: where the new text of a reply ends and the quoted history begins."""

from __future__ import annotations

import random

import pytest

from helpdesk.mail import quoting
from helpdesk.mail.quoting import split_reply


def test_empty_text() -> None:
    """An empty body splits into two empty strings."""
    assert split_reply("") == ("", "")


def test_no_quote_keeps_everything() -> None:
    """A mail without any quote is all new text, with trailing blank lines stripped."""
    assert split_reply("Hello\n\nThe printer is broken.\n\n\n") == (
        "Hello\n\nThe printer is broken.",
        "",
    )


def test_crlf_line_endings() -> None:
    """CRLF input is split like LF input."""
    new, quoted = split_reply("Thanks!\r\n\r\nOn Mon, Dana wrote:\r\n> old\r\n")
    assert new == "Thanks!"
    assert quoted == "On Mon, Dana wrote:\n> old"


@pytest.mark.parametrize(
    "header",
    [
        "On Tue, Sep 3, 2024 at 10:00 AM Dana Reyes <dana.reyes@example.com> wrote:",
        "On 3 Sep 2024, at 10:00, Dana Reyes <dana.reyes@example.com> wrote:",
        "On 03.09.24 10:00, Dana Reyes wrote:",
        "Am Di., 3. Sept. 2024 um 10:00 Uhr schrieb Dana Reyes <dana.reyes@example.com>:",
        "Am 03.09.2024 um 10:00 schrieb Dana Reyes:",
        "Le mar. 3 sept. 2024 à 10:00, Dana Reyes <dana.reyes@example.com> a écrit :",
        "El mar, 3 sept 2024 a las 10:00, Dana Reyes (<dana.reyes@example.com>) escribió:",
        "Op di 3 sep 2024 om 10:00 schreef Dana Reyes <dana.reyes@example.com>:",
        "Den tis 3 sep. 2024 kl 10:00 skrev Dana Reyes <dana.reyes@example.com>:",
        "tir. 3. sep. 2024 kl. 10:00 skrev Dana Reyes <dana.reyes@example.com>:",
        "Il giorno mar 3 set 2024 alle ore 10:00 Dana Reyes <dana.reyes@example.com> ha scritto:",
        "Em ter., 3 de set. de 2024 às 10:00, Dana Reyes <dana.reyes@example.com> escreveu:",
        "03.09.2024 10:00, Дана Рейес пишет:",
        "3 сент. 2024 г., в 10:00, Дана Рейес <dana.reyes@example.com> написал(а):",
        "W dniu 3.09.2024 o 10:00, Dana Reyes <dana.reyes@example.com> napisał(a):",
    ],
)
def test_reply_header_languages(header: str) -> None:
    """A reply header in any supported language starts the quote."""
    text = f"Danke, läuft wieder.\n\n{header}\n> Der Drucker geht nicht.\n"
    new, quoted = split_reply(text)
    assert new == "Danke, läuft wieder."
    assert quoted == f"{header}\n> Der Drucker geht nicht."


def test_reply_header_wrapped_over_two_lines() -> None:
    """Gmail wraps a long "On ... wrote:" line; both lines go to the quote."""
    text = (
        "Works now, thanks.\n\n"
        "On Tue, Sep 3, 2024 at 10:00 AM IT Support <support@example.com>\n"
        "wrote:\n\n> Please restart.\n"
    )
    new, quoted = split_reply(text)
    assert new == "Works now, thanks."
    assert quoted.startswith("On Tue, Sep 3, 2024 at 10:00 AM IT Support")
    assert quoted.endswith("> Please restart.")


def test_prose_ending_in_wrote_is_not_a_header() -> None:
    """A sentence that merely ends in "wrote:" without date or address is kept."""
    text = "As my colleague wrote:\nthe printer needs toner.\n"
    assert split_reply(text) == ("As my colleague wrote:\nthe printer needs toner.", "")


@pytest.mark.parametrize(
    "separator",
    [
        "-----Original Message-----",
        "-----Ursprüngliche Nachricht-----",
        "-----Message d'origine-----",
        "-----Oprindelig meddelelse-----",
        "-----Opprinnelig melding-----",
        "-----Alkuperäinen viesti-----",
        "---------- Forwarded message ---------",
        "Begin forwarded message:",
    ],
)
def test_outlook_separators(separator: str) -> None:
    """Outlook's "Original Message" separators and forward markers start the quote."""
    text = f"See below.\n\n{separator}\nFrom: Dana\nSubject: x\n\nold text\n"
    new, quoted = split_reply(text)
    assert new == "See below."
    assert quoted.startswith(separator)
    assert quoted.endswith("old text")


@pytest.mark.parametrize("label", ["From", "Von", "De", "Van", "Från", "Fra", "Da", "Od"])
def test_underscore_line_followed_by_from(label: str) -> None:
    """A line of underscores followed by a From header (OWA) starts the quote."""
    text = (
        "Done.\n\n________________________________\n"
        f"{label}: IT Support <support@example.com>\nSent: Monday\n\nold\n"
    )
    new, quoted = split_reply(text)
    assert new == "Done."
    assert quoted.startswith("________________________________\n")


def test_underscore_line_without_header_is_kept() -> None:
    """A mailing list footer rule of underscores is not a quote."""
    text = "Hello all\n\n________________________________\nit-announce mailing list\n"
    assert split_reply(text)[1] == ""


@pytest.mark.parametrize(
    "block",
    [
        "From: IT Support <support@example.com>\nSent: Monday, 2 September 2024 16:30\n"
        "To: Dana Reyes\nSubject: [#1] Printer",
        "Von: IT Support <support@example.com>\nGesendet: Montag, 2. September 2024 16:30\n"
        "An: Dana Reyes\nBetreff: [#1] Drucker",
        "De : IT Support <support@example.com>\nEnvoyé : lundi 2 septembre 2024 16:30\n"
        "À : Dana Reyes\nObjet : [#1] Imprimante",
        "*From:* IT Support <support@example.com>\n*Date:* Monday\n*Subject:* [#1] Printer",
    ],
)
def test_outlook_header_block_without_separator(block: str) -> None:
    """Consecutive From/Sent/To/Subject lines start the quote even without a separator."""
    text = f"Thanks, fixed.\n\nDana\n\n{block}\n\nHi Dana, please restart.\n"
    new, quoted = split_reply(text)
    assert new == "Thanks, fixed.\n\nDana"
    assert quoted.startswith(block.split("\n", 1)[0])
    assert quoted.endswith("please restart.")


def test_single_from_line_is_not_a_block() -> None:
    """A lone "From:" line in prose (no Sent/To/Subject after it) is kept."""
    text = "From: the second floor, the printer is unreachable.\nPlease help.\n"
    assert split_reply(text)[1] == ""


@pytest.mark.parametrize(
    "signature",
    [
        "Sent from my iPhone",
        "Von meinem iPhone gesendet",
        "Get Outlook for iOS",
        "Get Outlook for Android",
        "Sent from my Android device",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
    ],
)
def test_mobile_signatures(signature: str) -> None:
    """Mobile client signatures end the new text."""
    new, quoted = split_reply(f"Yes, please.\n\n{signature}\n\n> old\n")
    assert new == "Yes, please."
    assert quoted.startswith(signature)


@pytest.mark.parametrize("separator", ["-- ", "--"])
def test_signature_separator(separator: str) -> None:
    """The signature separator "-- " (RFC 3676) ends the new text."""
    new, quoted = split_reply(f"Thanks\n{separator}\nDana Reyes\nSales\n")
    assert new == "Thanks"
    assert quoted.startswith("--")
    assert quoted.endswith("Sales")


def test_double_dash_inside_text_is_kept() -> None:
    """A "--" inside a line is not a signature separator."""
    text = "Use the --force flag -- carefully.\n"
    assert split_reply(text) == ("Use the --force flag -- carefully.", "")


def test_bottom_quote_without_header() -> None:
    """A trailing run of ">" lines is cut even without a reply header."""
    new, quoted = split_reply("Agreed.\n\n> Shall we restart the server?\n> Tonight?\n")
    assert new == "Agreed."
    assert quoted == "> Shall we restart the server?\n> Tonight?"


def test_inline_answers_are_kept() -> None:
    """Interleaved answers stay in new_text; only the trailing quote block is cut."""
    text = (
        "Hi Dana, answers inline.\n\n"
        "On 23.09.24 09:12, Dana Reyes wrote:\n"
        "> Will my files be copied?\n\n"
        "Yes, all of them.\n\n"
        "> Can I keep the dock?\n\n"
        "Yes.\n\n"
        "> And the old laptop?\n"
    )
    new, quoted = split_reply(text)
    assert "Yes, all of them." in new
    assert new.endswith("Yes.")
    assert "> Can I keep the dock?" in new
    assert quoted == "> And the old laptop?"


def test_bottom_posting_keeps_answer_and_cuts_signature() -> None:
    """A reply written below the quote is kept; its signature is cut."""
    text = (
        "On Mon, Sep 2, 2024 at 9:00 AM Dana <d@example.com> wrote:\n"
        "> Broken?\n\nFixed it.\n-- \nSam\n"
    )
    new, quoted = split_reply(text)
    assert new.endswith("Fixed it.")
    assert new.startswith("On Mon")
    assert quoted == "-- \nSam"


def test_signature_below_quote_does_not_count_as_inline_answer() -> None:
    """A signature placed under the quote does not make the quote interleaved."""
    text = "New text.\n\nOn 19.09.24 16:02, IT Support wrote:\n> old\n\n-- \nFelix\n"
    new, quoted = split_reply(text)
    assert new == "New text."
    assert quoted.startswith("On 19.09.24 16:02, IT Support wrote:")


def test_attribution_above_trailing_quote_goes_with_it() -> None:
    """An unknown-language attribution ending in "<address>:" joins the trailing quote."""
    text = "OK\n\nпн, 2 сент. 2024 г. в 10:00, Dana Reyes <dana.reyes@example.com>:\n> old\n"
    new, quoted = split_reply(text)
    assert new == "OK"
    assert quoted.startswith("пн, 2 сент.")


def test_whole_mail_quoted_is_new_text() -> None:
    """When everything would be cut (a bare forward), the whole text is new_text."""
    text = "---------- Forwarded message ---------\nFrom: A <a@example.com>\n\nHello\n"
    new, quoted = split_reply(text)
    assert new == text.rstrip()
    assert quoted == ""


def test_only_quote_lines_is_new_text() -> None:
    """A mail consisting only of ">" lines keeps them as new text."""
    assert split_reply("> a\n> b\n") == ("> a\n> b", "")


def test_first_cut_wins() -> None:
    """The first marker from the top decides, later ones stay in the quote."""
    text = "Top\n\nSent from my iPhone\n\n-----Original Message-----\nFrom: x\n"
    new, quoted = split_reply(text)
    assert new == "Top"
    assert quoted.startswith("Sent from my iPhone\n\n-----Original Message-----")


def test_long_lines_are_fast_and_safe() -> None:
    """A very long line ending in ":" is not a header and does not hang the regexes."""
    text = "On " + "x " * 50_000 + "wrote:\n> q\n"
    new, quoted = split_reply(text)
    assert new.startswith("On x x")
    assert quoted == "> q"


def test_disclaimer_below_quote_is_not_an_inline_answer() -> None:
    """A legal footer appended under the quote does not stop the cut at the reply header."""
    text = (
        "Any news?\n\nUrsula\n\n"
        "On Mon, 3 Jun 2024 at 09:49, Ursula <ursula@example.com> wrote:\n\n> Wi-Fi is down.\n\n"
        "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential.\n\n"
        "Second paragraph of the notice."
    )
    new, quoted = split_reply(text)
    assert new == "Any news?\n\nUrsula"
    assert quoted.startswith("On Mon, 3 Jun 2024")
    assert quoted.endswith("Second paragraph of the notice.")


def test_disclaimer_below_bottom_quote() -> None:
    """A trailing quote is still cut when a disclaimer follows it."""
    text = "OK\n\n> old\n\nVERTRAULICHKEITSHINWEIS: Diese E-Mail ist vertraulich."
    new, quoted = split_reply(text)
    assert new == "OK"
    assert quoted == "> old\n\nVERTRAULICHKEITSHINWEIS: Diese E-Mail ist vertraulich."


def test_answer_below_quote_is_not_a_disclaimer() -> None:
    """Ordinary text written under a quote still counts as a new answer."""
    text = "On Mon, Sep 2, 2024 at 9:00 AM Dana <d@example.com> wrote:\n> Broken?\n\nNo, fixed.\n"
    assert split_reply(text) == (text.rstrip(), "")


def _interleaved_after_reference(lines: list[str], index: int) -> bool:
    """The per-header scan split_reply did before (quadratic over many headers): the oracle."""
    seen_quote = False
    for line in lines[index + 1 :]:
        if line.lstrip().startswith(">"):
            seen_quote = True
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if quoting._SIGNATURE_RE.match(line) or quoting._is_mobile_signature(stripped):
            return False
        if seen_quote:
            return True
    return False


@pytest.mark.parametrize("seed", range(3))
def test_inline_answers_are_found_as_the_per_header_scan_found_them(seed: int) -> None:
    """The one-pass table answers "is this header answered inline?" like the old scan."""
    pieces = ["On ab wrote:", "> x", ">", "n", "", "  ", "-- ", "Sent from my iPhone", "hello",
              "> > y", "Dana <d@x.com>:"]
    rnd = random.Random(seed)
    for _ in range(3000):
        lines = [rnd.choice(pieces) for _ in range(rnd.randint(0, 14))]
        end = rnd.randint(0, len(lines))
        below = quoting._interleaved_below(lines, end)
        for index in range(end):
            assert below[index + 1] == _interleaved_after_reference(lines[:end], index), lines


def test_many_reply_headers_each_answered_inline() -> None:
    """Reply headers each followed by a quote and an answer: nothing is cut."""
    text = "On ab wrote:\n>\nn\n" * 50
    assert split_reply(text) == (text.rstrip(), "")
