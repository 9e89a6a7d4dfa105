"""Recover the original mail when an agent forwards a customer's mail to support.

`find_forwarded(msg)` is pure (no I/O, no clock) and never raises. It returns a
`ForwardedMail` with the original's sender, subject, date, text, Message-ID and
attachments, how it was found, and the forwarder's own note; or None when
`msg` is not a forward or no usable sender address can be found.

What counts as a forward (a reply with quoted history must never count):

* a subject whose first prefix is a reply prefix (`Re:`, `AW:`, `SV:`, ...)
  is a reply: None, whatever the body holds ("Re: Fwd: x" is a reply too);
* a subject whose first prefix is a forward prefix (`Fwd:`, `Fw:`, `WG:`,
  `TR:`, `RV:`, `Doorst:`, `VS:`, ...) is a forward: the first forward marker
  anywhere in the unquoted text counts, or else an attached mail;
* any other subject counts only when the body *starts* with the forward:
  at most `_MAX_NOTE_LINES` non-blank lines of note, then a marker that only
  forwards write (Gmail, Apple Mail, Thunderbird). Outlook writes the same
  "-----Original Message-----" block for replies and forwards, so without a
  forward prefix it counts only on the very first line (no note at all).
  An attached mail counts when the note beside it is that short.

Where the original comes from, in order:

1. an inline forward in the text (Gmail "---------- Forwarded message
   ---------", Outlook "-----Original Message-----" / a line of underscores /
   a bare From-Sent-To-Subject block, Apple Mail "Begin forwarded message:",
   Thunderbird "-------- Forwarded Message --------", in the languages we
   see): the header block after the marker gives sender, subject and date,
   the text after the block is the original's text, and the forward's own
   attachments are the original's (clients copy them over);
2. an attached `message/rfc822` part (or an attachment named `*.eml`),
   parsed with `parse()`.

The inline forward is looked at first although the brief listed the
attachment first: an inline forward of a customer's mail that carries an
attached mail (a phishing sample, say) must open the ticket for the
customer, not for whoever wrote the attached sample. When the text has no
marker, the attachment decides, as the brief asks.

Limitations: a nested forward yields the outermost original (the first
marker); Outlook writes `From: Name` without an address for senders in its
own directory, and then, with no address anywhere, the result is None; inline
dates carry no time zone, so they are read in the time zone of the forward's
own Date header (the forwarder's client wrote both), which may be an hour off
across a daylight-saving change, and are None when that header is missing.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from datetime import datetime

from helpdesk.mail.fwddates import inline_date, zone_of
from helpdesk.mail.parse import parse
from helpdesk.values import Address, AttachmentPart, ParsedMessage

__all__ = ["ForwardedMail", "find_forwarded"]

# How many non-blank lines a forwarder may write above the forward before it
# stops looking like "FYI, see below" and starts looking like a reply.
_MAX_NOTE_LINES = 5
# Blank lines allowed between a marker and its header block (Apple Mail puts one).
_MAX_GAP = 2
# Header lines longer than this are prose, not a forward's header block; the
# bound also keeps the regexes linear on hostile input.
_MAX_HEADER_LINE = 1000
# A field folded over many lines keeps this much: a wrapped To line of a big
# forward fits, a Sent value of a million continuation lines does not.
_MAX_FIELD = 4 * _MAX_HEADER_LINE


@dataclass(frozen=True, slots=True)
class ForwardedMail:
    """The original mail inside a forward.

    `how` is "attached", "gmail", "outlook", "apple" or "thunderbird";
    `message_id` is None for inline forwards (clients do not copy it) and for
    attached mails without one; `date` is UTC or None; `note` is what the
    forwarder wrote above the forward (or beside the attached mail).
    """

    sender: Address
    subject: str
    date: datetime | None
    text: str
    message_id: str | None
    attachments: tuple[AttachmentPart, ...]
    how: str
    note: str = ""


def find_forwarded(msg: ParsedMessage) -> ForwardedMail | None:
    """The original mail forwarded in `msg`, or None (see the module docstring)."""
    kind = _subject_kind(msg.subject)
    if kind == "reply":
        return None
    lines = msg.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    marker = _find_marker(lines, forward_subject=kind == "forward")
    if marker is not None:
        found = _inline(msg, lines, marker)
        if found is not None:
            return found
    return _attached(msg, forward_subject=kind == "forward")


# --------------------------------------------------------------------------
# Subjects

# The first prefix of a subject, behind any "[EXTERNAL]" or "[#1042]" tags:
# "Fwd:", "RE :", "Re[2]:", "AW(3):".
_PREFIX_RE = re.compile(
    r"\s*(?:\[[^\]]{0,80}\]\s*)*([^\W\d_]{1,12})\.?\s*(?:\[\d{1,4}\]|\(\d{1,4}\))?\s*:\s*"
)
_FORWARD_PREFIXES = frozenset(
    {
        "fwd", "fw", "wg", "tr", "rv", "reenv", "enc", "doorst", "vs", "vl", "vb", "pd",
        "i", "továbbítás", "пересл",
    }
)  # fmt: skip
_REPLY_PREFIXES = frozenset(
    {
        "re", "aw", "antw", "antwort", "sv", "ref", "réf", "rif", "r", "res", "odp", "vá",
        "ynt", "atb", "отв", "ответ",
    }
)  # fmt: skip


_KNOWN_PREFIXES = _FORWARD_PREFIXES | _REPLY_PREFIXES


def _subject_kind(subject: str) -> str:
    """Whether the subject is a "forward", a "reply" or "plain", by its first prefix."""
    match = _PREFIX_RE.match(subject)
    if match is None:
        return "plain"
    prefix = match.group(1).lower()
    if prefix in _FORWARD_PREFIXES:
        return "forward"
    if prefix in _REPLY_PREFIXES:
        return "reply"
    return "plain"


def _without_prefixes(subject: str) -> str:
    """The subject without leading tags and forward or reply prefixes: "[EXT] Fwd: AW: x" is "x".

    Used when an inline forward has no Subject line of its own.
    """
    text = subject.strip()
    start = 0  # a position, not a slice per prefix: "Fwd: " * 200000 is one pass
    while True:
        match = _PREFIX_RE.match(text, start)
        if match is None or match.group(1).lower() not in _KNOWN_PREFIXES:
            return text[start:]
        start = match.end()


# --------------------------------------------------------------------------
# Markers

_FORWARD_WORDS = (
    r"Forwarded message|Weitergeleitete Nachricht|Message transféré|Mensaje reenviado|"
    r"Doorgestuurd bericht|Messaggio inoltrato|Mensagem encaminhada|"
    r"Vidarebefordrat meddelande|Videresendt meddelelse|Videresendt melding|"
    r"Välitetty viesti|Wiadomość przekazana dalej|Přeposlaná zpráva|Пересылаемое сообщение"
)
# Gmail writes ten dashes before and nine after, Thunderbird eight and eight.
_DASHED_FORWARD_RE = re.compile(rf"^-{{3,}}\s*(?:{_FORWARD_WORDS})\s*-{{3,}}$", re.IGNORECASE)
_APPLE_RE = re.compile(
    r"^(?:Begin forwarded message|Anfang der weitergeleiteten Nachricht|"
    r"Début du message réexpédié|Inicio del mensaje reenviado|Begin doorgestuurd bericht|"
    r"Inizio messaggio inoltrato|Início da mensagem reencaminhada)\s*:$",
    re.IGNORECASE,
)
_ORIGINAL_RE = re.compile(
    r"^-{3,}\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|"
    r"Mensaje original|Messaggio originale|Oorspronkelijk bericht|Mensagem original|"
    r"Originalmeddelande|Oprindelig meddelelse|Opprinnelig melding|Alkuperäinen viesti|"
    r"Wiadomość oryginalna|Původní zpráva|Исходное сообщение|Eredeti üzenet)\s*-*$",
    re.IGNORECASE,
)
# New Outlook and OWA draw a line of underscores above the header block.
_UNDERSCORES_RE = re.compile(r"^_{20,}$")


@dataclass(frozen=True, slots=True)
class _Marker:
    index: int  # the marker line; the note is everything above it
    headers: int  # the first line of the header block
    style: str  # "dashed" (Gmail or Thunderbird), "apple" or "outlook"
    strong: bool  # only forwards write it (Outlook writes its marker in replies too)


def _find_marker(lines: list[str], *, forward_subject: bool) -> _Marker | None:
    """The first forward marker, if it is where a forward's marker would be."""
    note_lines = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(">"):
            note_lines += bool(stripped)
            continue
        marker = _marker_at(lines, index)
        if marker is not None:
            if forward_subject:
                return marker
            if marker.strong:
                return marker if note_lines <= _MAX_NOTE_LINES else None
            return marker if note_lines == 0 else None
        note_lines += 1
        if not forward_subject and note_lines > _MAX_NOTE_LINES:
            return None  # too much text above for "the body starts with a forward"
    return None


def _marker_at(lines: list[str], index: int) -> _Marker | None:
    stripped = lines[index].strip()
    if len(stripped) > _MAX_HEADER_LINE:
        return None
    if _DASHED_FORWARD_RE.match(stripped):
        return _marker_with_block(lines, index, "dashed", strong=True)
    if _APPLE_RE.match(stripped):
        return _marker_with_block(lines, index, "apple", strong=True)
    if _ORIGINAL_RE.match(stripped) or _UNDERSCORES_RE.match(stripped):
        return _marker_with_block(lines, index, "outlook", strong=False)
    if _outlook_block_at(lines, index):
        # Outlook for Mac and OWA: the separator is a border in the HTML, so
        # the plain text has only the From/Sent/To/Subject block.
        return _Marker(index, index, "outlook", strong=False)
    return None


def _marker_with_block(lines: list[str], index: int, style: str, *, strong: bool) -> _Marker | None:
    """The marker, when a header block with a From line follows it."""
    start = _next_nonblank(lines, index + 1)
    if start is None or start - index - 1 > _MAX_GAP:
        return None
    block = _read_block(lines, start)
    return _Marker(index, start, style, strong) if "from" in block.fields else None


def _outlook_block_at(lines: list[str], index: int) -> bool:
    """A From line starting a block that also has at least two of Sent, To and Subject."""
    label = _label(lines[index].strip())
    if label is None or label[0] != "from":
        return False
    block = _read_block(lines, index)
    return len(block.fields.keys() & {"date", "to", "subject"}) >= 2


def _next_nonblank(lines: list[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None


# --------------------------------------------------------------------------
# Header blocks

# Labels of the header block, as the clients write them in their languages.
_LABELS: dict[str, str] = {
    **dict.fromkeys(
        (
            "from", "von", "de", "van", "från", "fra", "da", "od", "от", "lähettäjä",
            "feladó", "kimden", "expéditeur", "remitente",
        ),
        "from",
    ),
    **dict.fromkeys(
        (
            "date", "sent", "gesendet", "datum", "envoyé", "enviado", "fecha", "inviato",
            "data", "verzonden", "skickat", "sendt", "wysłano", "odesláno", "отправлено",
            "lähetetty", "elküldve", "gönderildi",
        ),
        "date",
    ),
    **dict.fromkeys(
        (
            "to", "an", "à", "a", "para", "aan", "till", "til", "do", "komu", "кому",
            "vastaanottaja", "címzett", "kime",
        ),
        "to",
    ),
    **dict.fromkeys(("cc", "kopie", "copie", "kopia", "копия"), "cc"),
    **dict.fromkeys(
        (
            "subject", "betreff", "objet", "asunto", "oggetto", "assunto", "onderwerp",
            "ämne", "emne", "temat", "předmět", "тема", "aihe", "tárgy", "konu",
        ),
        "subject",
    ),
    # Lines Outlook adds that carry nothing we need but belong to the block.
    **dict.fromkeys(
        (
            "reply-to", "antwort an", "répondre à", "bcc", "importance", "wichtigkeit",
            "priority", "attachments", "anlagen", "pièces jointes",
        ),
        "other",
    ),
}  # fmt: skip
# "From: x", "*From:* x" (Gmail's rendering of bold labels), "De : x" (French
# puts a space before the colon), "Subject:\tx" (Thunderbird aligns with tabs).
_LABEL_RE = re.compile(
    r"^\*{0,2}\s*([^\W\d_][^\W\d_ '-]*(?:[ '-][^\W\d_]+)?)\s*:\*{0,2}\s*(.*)$"
)


def _label(line: str) -> tuple[str, str] | None:
    """(kind, value) of a header line of a forward's block, or None."""
    if len(line) > _MAX_HEADER_LINE:
        return None
    match = _LABEL_RE.match(line)
    if match is None:
        return None
    kind = _LABELS.get(match.group(1).lower())
    return (kind, (match.group(2) or "").strip()) if kind else None


@dataclass(frozen=True, slots=True)
class _Block:
    fields: dict[str, str]  # kind -> value, the first of each kind
    first: str | None  # the kind of the first line (Thunderbird starts with Subject)
    end: int  # the first line after the block


def _read_block(lines: list[str], start: int) -> _Block:
    """The header lines from `start` on; continuation lines are folded in.

    A blank line ends the block unless another label of a kind not seen yet
    follows right after it: mail converted from HTML sometimes separates
    every header line by a blank line.
    """
    # The pieces of each field, joined once at the end: joining as each
    # continuation line comes would copy the value again for every line.
    fields: dict[str, list[str]] = {}
    lengths: dict[str, int] = {}
    first: str | None = None
    last: str | None = None
    index = start
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        if not stripped:
            following = _next_nonblank(lines, index)
            label = _label(lines[following].strip()) if following is not None else None
            if following is None or following - index > 1 or label is None:
                break
            if label[0] in fields and label[0] != "other":
                break
            index = following
            continue
        label = _label(stripped)
        if label is None:
            if last is not None and line[:1] in (" ", "\t"):  # a wrapped To or Cc line
                if lengths[last] < _MAX_FIELD:
                    fields[last].append(stripped)
                    lengths[last] += len(stripped) + 1
                index += 1
                continue
            break
        kind, value = label
        if kind in fields and kind != "other":
            break  # a second From: the block of an older mail further down
        first = first or kind
        last = kind
        fields[kind] = [value] if value else []
        lengths[kind] = len(value)
        index += 1
    fields.pop("other", None)
    joined = {kind: " ".join(parts)[:_MAX_FIELD] for kind, parts in fields.items()}
    return _Block(joined, first, index)


# --------------------------------------------------------------------------
# Inline forwards


def _inline(msg: ParsedMessage, lines: list[str], marker: _Marker) -> ForwardedMail | None:
    block = _read_block(lines, marker.headers)
    sender = _sender(block.fields.get("from", ""))
    if sender is None:
        return None
    how = marker.style
    if how == "dashed":
        how = "thunderbird" if block.first == "subject" else "gmail"
    return ForwardedMail(
        sender=sender,
        subject=block.fields.get("subject") or _without_prefixes(msg.subject),
        date=inline_date(block.fields.get("date", ""), zone_of(msg.header("Date"))),
        text=_strip_blank_lines(lines[block.end :]),
        message_id=None,
        attachments=msg.attachments,
        how=how,
        note=_strip_blank_lines(lines[: marker.index]),
    )


# An address as forwards write it: "<a@b>", "[mailto:a@b]", "a@b", also
# Outlook's "a@b<mailto:a@b>" after an HTML conversion.
# Matched only where a run of address characters begins: tried at every
# character of a long run without "@", it rescanned the rest of the run.
_ADDRESS_RE = re.compile(
    r"(?<![^\s<>\[\]()\"',;:@*])[^\s<>\[\]()\"',;:@*]+@[^\s<>\[\]()\"',;:@*]+"
)


def _sender(value: str) -> Address | None:
    """The address and display name of a forward's From line, or None without an address."""
    text = re.sub(r"mailto:", " ", value, flags=re.IGNORECASE)
    match = _ADDRESS_RE.search(text)
    if match is None:
        return None
    address = match.group(0).rstrip(".").lower()
    if address.startswith(".") or address.endswith("@") or "." not in address.rpartition("@")[2]:
        return None
    # The display name ends where the address part begins: "Name <a@b>", "Name [mailto:a@b]".
    cut = min(p for p in (text.find("<"), text.find("["), match.start()) if p >= 0)
    name = " ".join(text[:cut].split()).strip("\"'* ")
    return Address(address=address, name="" if name.lower() == address else name)


def _strip_blank_lines(lines: list[str]) -> str:
    return "\n".join(lines).strip("\n").rstrip()


# --------------------------------------------------------------------------
# Attached mails


def _attached(msg: ParsedMessage, *, forward_subject: bool) -> ForwardedMail | None:
    part = next((a for a in msg.attachments if _is_mail(a)), None)
    if part is None:
        return None
    note = msg.text.strip()
    if not forward_subject and _count_nonblank(note) > _MAX_NOTE_LINES:
        return None  # a long mail that happens to carry a mail is not a forward
    inner = _parse_attached(part.content)
    if inner.from_ is None:
        return None
    return ForwardedMail(
        sender=inner.from_,
        subject=inner.subject,
        date=inner.date,
        text=inner.text,
        message_id=None if inner.message_id_synthetic else inner.message_id,
        attachments=inner.attachments,
        how="attached",
        note=note,
    )


# RFC 2046 section 5.2.1 allows only 7bit, 8bit and binary for message/rfc822,
# but some senders (Python's EmailMessage.add_attachment among them) base64 it,
# and parse() then keeps the still-encoded body as the attachment's content.
_BASE64_TEXT_RE = re.compile(rb"^[A-Za-z0-9+/=\s]+$")


def _parse_attached(content: bytes) -> ParsedMessage:
    inner = parse(content)
    if inner.from_ is None and _BASE64_TEXT_RE.match(content):
        try:
            decoded = binascii.a2b_base64(content)
        except binascii.Error:
            return inner
        return parse(decoded)
    return inner


def _count_nonblank(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def _is_mail(attachment: AttachmentPart) -> bool:
    return attachment.content_type == "message/rfc822" or attachment.filename.lower().endswith(
        ".eml"
    )
