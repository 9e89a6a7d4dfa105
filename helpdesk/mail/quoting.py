"""Split a plain-text reply into what the sender wrote now and what they quoted.

`split_reply(text)` is a pure function that never raises. It looks for the
first line that starts the quoted history:

* a reply header ("On <date>, <name> wrote:" and its German, French, Spanish,
  Dutch, Scandinavian, Italian, Portuguese, Polish, Czech, Finnish, Hungarian
  and Russian forms), also when a client wrapped it over two lines;
* an Outlook separator ("-----Original Message-----" in many languages, or a
  line of underscores followed by a "From:" header), a forward marker, or an
  Outlook header block ("From:", "Sent:", "To:", "Subject:") without one;
* a mobile signature ("Sent from my iPhone", "Von meinem iPhone gesendet",
  "Get Outlook for iOS", ...) or the signature separator "-- " (RFC 3676
  section 4.3);
* failing all of these, the run of ">"-quoted lines that ends the mail.

The rule of thumb is that losing new content is worse than keeping some old
content: a reply header followed by interleaved answers (quoted lines, then
new lines, then quoted lines) is not a cut, and when everything would be cut
(a bare forward, a mail that is all quote) the whole text is new_text.
"""

from __future__ import annotations

import re

__all__ = ["split_reply"]

# Longest line we try the reply-header patterns on: real headers are short,
# and the bound keeps the regexes linear on hostile input.
_MAX_HEADER_LINE = 400

# Verbs that end a reply header. Some languages put the sender after the verb
# ("Am ... schrieb Dana <d@example.com>:"), so text may follow the verb.
_VERBS = (
    r"(?:wrote|schrieb|a\s+écrit|escribió|escribio|schreef|skrev|ha\s+scritto|"
    r"escreveu|napisał\(a\)|napisała|napisał|napsal\(a\)|napsala|napsal|kirjoitti|írta|"
    r"yazdı|пишет|написал\(а\)|написала|написал)"
)

# "On ... wrote:" and its translations start with a fixed word (Gmail, Apple
# Mail and Thunderbird all write the date first).
_HEADER_RE = re.compile(
    r"^(?:On|Am|Le|El|Op|Den|Il|Em|W\s+dniu|Dne)\s.{2,300}?\s" + _VERBS + r"(?:\s.{0,200})?\s*:$",
    re.DOTALL,
)

# Without a start word ("03.09.2024 10:00, Dana пишет:", Norwegian Gmail's
# "tir. 3. sep. 2024 kl. 10:00 skrev Dana <d@example.com>:") we also want a
# date digit or an address, so that prose ending in "wrote:" is not a cut.
_LOOSE_HEADER_RE = re.compile(
    r"^(?=.*[\d@]).{2,300}?\s"
    r"(?:wrote|skrev|kirjoitti|írta|пишет|написал\(а\)|написала|написал)"
    r"(?:\s.{0,200})?\s*:$",
    re.DOTALL,
)

# Outlook's "-----Original Message-----" in the languages we see, plus the
# forward markers of Gmail and Apple Mail.
_SEPARATOR_RE = re.compile(
    r"^\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|"
    r"Oprindelig meddelelse|Opprinnelig melding|Alkuperäinen viesti|Mensaje original|"
    r"Messaggio originale|Oorspronkelijk bericht|Originalmeddelande|Ursprungligt meddelande|"
    r"Mensagem original|Исходное сообщение|Wiadomość oryginalna|Původní zpráva|"
    r"Eredeti üzenet|Forwarded message|Weitergeleitete Nachricht|Message transféré|"
    r"Mensaje reenviado|Doorgestuurd bericht)\s*-*\s*$",
    re.IGNORECASE,
)
_FORWARD_RE = re.compile(
    r"^(?:Begin forwarded message|Anfang der weitergeleiteten Nachricht|"
    r"Début du message réexpédié|Inicio del mensaje reenviado)\s*:$",
    re.IGNORECASE,
)

# Outlook (OWA, new Outlook) puts a line of underscores above the header block.
_UNDERSCORES_RE = re.compile(r"^\s*_{20,}\s*$")

# Header lines of an Outlook quote block; Gmail renders the bold labels as
# "*From:*" in its plain-text part, hence the optional stars.
_LABEL = r"^\*?\s*(?:{})\s*:\*?(?:\s|$)"
_FROM_RE = re.compile(_LABEL.format(r"From|Von|De|Van|Från|Fra|Da|Od|От|Lähettäjä|Feladó|Kimden"))
_DATE_RE = re.compile(
    _LABEL.format(
        r"Sent|Date|Gesendet|Datum|Envoyé|Enviado|Fecha|Inviato|Data|Verzonden|Skickat|"
        r"Sendt|Wysłano|Odesláno|Отправлено|Lähetetty|Elküldve|Gönderildi"
    )
)
_TO_RE = re.compile(
    _LABEL.format(
        r"To|An|À|A|Para|Aan|Till|Til|Do|Komu|Кому|Vastaanottaja|Címzett|Kime|"
        r"Cc|Kopie|CC|Copie|Kopia|Копия"
    )
)
_SUBJECT_RE = re.compile(
    _LABEL.format(
        r"Subject|Betreff|Objet|Asunto|Oggetto|Assunto|Onderwerp|Ämne|Emne|Temat|"
        r"Předmět|Тема|Aihe|Tárgy|Konu"
    )
)

# Signatures that phones and Outlook mobile add below the new text.
_MOBILE_RE = re.compile(
    r"^(?:Sent from (?:my|Mail|Yahoo|Outlook|Samsung)|Sent with |Sent via |"
    r"Get Outlook for |Von meinem .{1,40} gesendet|Gesendet von (?:meinem|Mail)|"
    r"Envoyé de mon|Envoyé depuis mon|Enviado desde mi|Enviado do meu|Enviado de meu|"
    r"Inviato da|Verzonden (?:met|vanaf) mijn|Verstuurd vanaf mijn|Skickat från min|"
    r"Sendt fra min|Lähetetty .{1,40}(?:stani|puhelimesta)|Wysłane z|Odesláno z|"
    r"Отправлено (?:с|из))",
    re.IGNORECASE,
)
_MOBILE_MAX_LINE = 100

# RFC 3676 section 4.3: "-- " on a line of its own starts the signature. Many
# clients strip the trailing space, so "--" alone counts too.
_SIGNATURE_RE = re.compile(r"^-- ?$")

# Legal footers that mail servers append below everything, quote included.
_DISCLAIMER_RE = re.compile(
    r"^\W*(?:CONFIDENTIALITY NOTICE|DISCLAIMER|VERTRAULICHKEITSHINWEIS|HAFTUNGSAUSSCHLUSS|"
    r"AVIS DE CONFIDENTIALIT|AVISO DE CONFIDENCIALIDAD|AVVISO DI RISERVATEZZA|"
    r"This (?:e-?mail|message|communication)\b.{0,80}\b(?:confidential|privileged)|"
    r"Diese (?:E-?Mail|Nachricht)\b.{0,80}\bvertraulich)",
    re.IGNORECASE,
)

# A loose attribution directly above a trailing quote block.
_ATTRIBUTION_RE = re.compile(r"(?:@|\b" + _VERBS + r"\b).*:$")


def split_reply(text: str) -> tuple[str, str]:
    """Return (new_text, quoted_text) for a plain-text mail body; never raises."""
    if not text:
        return "", ""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = _find_cut(lines, _footer_start(lines))
    if cut is None:
        return _strip_blank_lines(lines), ""
    new_text = _strip_blank_lines(lines[:cut])
    if not new_text.strip():
        # Everything would be cut (a bare forward, a mail that is all quote):
        # the quote is then the new content.
        return _strip_blank_lines(lines), ""
    return new_text, _strip_blank_lines(lines[cut:])


def _strip_blank_lines(lines: list[str]) -> str:
    """Join lines, dropping leading and trailing blank lines and trailing spaces."""
    return "\n".join(lines).strip("\n").rstrip()


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _footer_start(lines: list[str]) -> int:
    """Where a legal disclaimer appended below the quote begins (len(lines) if none).

    Such a footer is not an answer written below the quote, so it must not
    make a top-posted reply look interleaved.
    """
    last_quote = -1
    for index in range(len(lines) - 1, -1, -1):
        if _is_quoted(lines[index]):
            last_quote = index
            break
    if last_quote < 0:
        return len(lines)
    for index in range(last_quote + 1, len(lines)):
        stripped = lines[index].strip()
        if stripped:
            return index if _DISCLAIMER_RE.match(stripped) else len(lines)
    return len(lines)


def _find_cut(lines: list[str], end: int) -> int | None:
    """Index of the first line of the quoted part, or None when nothing is quoted.

    Lines from `end` on are a footer: they go with the quote, never decide.
    """
    interleaved: list[bool] | None = None  # computed once, when a reply header needs it
    for index in range(end):
        line = lines[index]
        if _is_quoted(line):
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if _is_reply_header(lines, index):
            if interleaved is None:
                interleaved = _interleaved_below(lines, end)
            if interleaved[index + 1]:
                # Inline answers follow the header: keep them all and only
                # drop the quote block that ends the mail, if any.
                continue
            return index
        if _is_separator(lines, index) or _is_outlook_block(lines, index):
            return index
        if _SIGNATURE_RE.match(line) or _is_mobile_signature(stripped):
            return index
    return _trailing_quote_start(lines[:end])


def _is_reply_header(lines: list[str], index: int) -> bool:
    """Whether lines[index] (possibly wrapped onto the next line) is a reply header."""
    line = lines[index].strip()
    if len(line) > _MAX_HEADER_LINE:
        return False
    if line.endswith(":") and (_HEADER_RE.match(line) or _LOOSE_HEADER_RE.match(line)):
        return True
    # Gmail wraps long headers: "On Tue, ... Dana Reyes <dana@example.com>\nwrote:".
    if index + 1 < len(lines) and not line.endswith(":"):
        following = lines[index + 1].strip()
        if following.endswith(":") and len(following) <= _MAX_HEADER_LINE:
            joined = f"{line} {following}"
            return bool(_HEADER_RE.match(joined))
    return False


def _interleaved_below(lines: list[str], end: int) -> list[bool]:
    """For each index i up to `end`: whether new (unquoted) lines follow quoted
    lines in lines[i:end]. A reply header just above i is then answered inline.

    A signature below the quote (Thunderbird can put it there) is not new text.
    One pass from the end answers it for every index: scanning everything
    below each reply header was quadratic in a mail made of reply headers.
    """
    below = [False] * (end + 1)
    after_quote = False  # the answer for lines[i:] had a quoted line come above them
    for index in range(end - 1, -1, -1):
        line = lines[index]
        stripped = line.strip()
        if _is_quoted(line):
            below[index] = after_quote
        elif not stripped:
            below[index] = below[index + 1]
        elif _SIGNATURE_RE.match(line) or _is_mobile_signature(stripped):
            below[index] = after_quote = False
        else:
            below[index] = below[index + 1]
            after_quote = True
    return below


def _next_nonblank(lines: list[str], index: int, limit: int = 3) -> str | None:
    """The first non-blank line after lines[index], looking at most `limit` lines on."""
    for line in lines[index + 1 : index + 1 + limit]:
        if line.strip():
            return line.strip()
    return None


def _is_separator(lines: list[str], index: int) -> bool:
    line = lines[index].strip()
    if _SEPARATOR_RE.match(line) or _FORWARD_RE.match(line):
        return True
    if _UNDERSCORES_RE.match(line):
        following = _next_nonblank(lines, index)
        return following is not None and bool(_FROM_RE.match(following))
    return False


def _is_outlook_block(lines: list[str], index: int) -> bool:
    """A "From:" line followed by at least two of Sent/To/Subject, without blank lines."""
    if not _FROM_RE.match(lines[index].strip()):
        return False
    kinds: set[str] = set()
    for line in lines[index + 1 : index + 9]:
        stripped = line.strip()
        if not stripped:
            break
        if _DATE_RE.match(stripped):
            kinds.add("date")
        elif _SUBJECT_RE.match(stripped):
            kinds.add("subject")
        elif _TO_RE.match(stripped):
            kinds.add("to")
    return len(kinds) >= 2


def _is_mobile_signature(stripped: str) -> bool:
    return len(stripped) <= _MOBILE_MAX_LINE and bool(_MOBILE_RE.match(stripped))


def _trailing_quote_start(lines: list[str]) -> int | None:
    """Start of the run of quoted (and blank) lines that ends the mail, if any."""
    start: int | None = None
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if _is_quoted(line):
            start = index
        elif line.strip():
            break
    if start is None:
        return None
    # Take along an attribution line the strict patterns did not know,
    # e.g. "Dana Reyes <dana@example.com>:" from a localised Gmail.
    above = start - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    if above >= 0:
        candidate = lines[above].strip()
        if len(candidate) <= _MAX_HEADER_LINE and _ATTRIBUTION_RE.search(candidate):
            return above
    return start
