"""Tell human mail from automated mail: auto-replies, bounces, lists and our own.

Contract of `classify(msg, raw, own_addresses=..., loop_id=...)`:

* it is pure: no I/O, no clock, no logging, no environment;
* it never raises because of the mail, whatever `msg` and `raw` hold (an
  exception from the caller's own `own_addresses` callable is not swallowed:
  a failing address directory is a fault to report, not a reason to guess);
* the class is the first of OWN > BOUNCE > AUTO_REPLY > LIST > HUMAN that any
  signal points at, and `reasons` lists, in rule order, every signal of that
  class: short human strings naming the header and value, for the audit trail;
* a BOUNCE carries a `BounceReport` when one can be read: from the RFC 3464
  `message/delivery-status` part (`parse_dsn`), else from the text of the
  notification (`parse_bounce_text`); else `bounce` is None.

Why the classes matter: RFC 3834 section 2 says not to answer automatically
generated mail, and answering a bounce, an out-of-office note or a list is how
mail loops start. OWN goes first because a mail of ours coming back must never
be treated as a customer's, whatever else it looks like.

`is_noreply_address` is the rule every later stage uses to never send an
automatic answer to an address that cannot or will not read it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from helpdesk.mail.dsn import is_noreply_address, parse_bounce_text, parse_dsn
from helpdesk.mail.dsn import keyword as _keyword
from helpdesk.mail.dsn import local_part as _local_part
from helpdesk.mail.dsn import shorten as _shorten
from helpdesk.values import BounceReport, MailClass, ParsedMessage, Verdict

# parse_dsn, parse_bounce_text and is_noreply_address live in helpdesk.mail.dsn
# (reading what a bounce says); they stay importable from here.
__all__ = ["classify", "is_noreply_address", "parse_bounce_text", "parse_dsn"]

_COMMENT_RE = re.compile(r"\([^()]*\)")

# --------------------------------------------------------------------------
# Small text helpers


def _fold(text: str) -> str:
    """Case- and accent-insensitive form: "Réponse" and "reponse" compare equal."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.split())


def _named(name: str, value: str) -> str:
    """A reason naming a header: "Name: value", or "Name present" when it is empty."""
    shown = _shorten(value)
    return f"{name}: {shown}" if shown else f"{name} present"


def _phrase_pattern(phrases: Iterable[str]) -> str:
    """An alternation of phrases in `_fold` form; spaces and hyphens are optional
    between words, so "Auto-Reply", "Auto Reply" and "Autoreply" all match."""
    parts = []
    for phrase in phrases:
        words = [re.escape(word) for word in re.split(r"[\s-]+", _fold(phrase)) if word]
        parts.append(r"[\s-]*".join(words))
    # Longest first, so that "out of office auto-reply" is tried before "out of office".
    return "|".join(sorted(parts, key=len, reverse=True))


# --------------------------------------------------------------------------
# Addresses

# Reports come from these: MTAs sign them MAILER-DAEMON, and postmaster is the
# mailbox every domain must have (RFC 5321 section 4.5.1).
_DAEMON_RE = re.compile(r"(?:^|[._=-])(?:mailer[._-]?daemon|postmaster)(?:$|[._=-])")


def _is_daemon(address: str) -> bool:
    return bool(_DAEMON_RE.search(_local_part(address)))


def _sender(msg: ParsedMessage) -> str | None:
    """The From address; for a bare "MAILER-DAEMON" without a domain, that word."""
    if msg.from_ is not None:
        return msg.from_.address
    value = _COMMENT_RE.sub(" ", msg.header("From") or "").strip()
    bracketed = re.search(r"<([^<>]*)>", value)
    candidate = (bracketed.group(1) if bracketed else value).strip().lower()
    return candidate if candidate and " " not in candidate else None


def _own_predicate(own: Callable[[str], bool] | frozenset[str]) -> Callable[[str], bool]:
    if callable(own):
        return lambda address: bool(own(address))
    lowered = frozenset(address.strip().lower() for address in own)
    return lambda address: address in lowered


# --------------------------------------------------------------------------
# Headers

# A parameter name is matched only where a run of name characters begins: tried
# at every character of a long run without "=", it rescanned the rest of the run.
_PARAM_RE = re.compile(r'(?<![\w.*-])([\w.*-]+)\s*=\s*("[^"]*"|[^;\s]*)')


def _content_type(msg: ParsedMessage) -> tuple[str, dict[str, str]]:
    """The top-level content type and its parameters, lower-cased."""
    value = msg.header("Content-Type") or ""
    head, _, rest = value.partition(";")
    params = {
        name.lower(): raw.strip().strip('"').strip().lower()
        for name, raw in _PARAM_RE.findall(rest)
    }
    return head.strip().lower(), params


def _report_type(msg: ParsedMessage) -> str | None:
    """The report-type of a multipart/report (RFC 6522), "" when it lacks one."""
    ctype, params = _content_type(msg)
    if ctype != "multipart/report":
        return None
    return params.get("report-type", "")


# --------------------------------------------------------------------------
# Subjects

# Reply prefixes of common clients ("Re", "AW", "SV", "Antw", "R", "Odp", ...),
# in `_fold` form, with counters like "Re[2]:" or "Re^2:". Forward prefixes
# are not stripped: a forwarded auto-reply is a person passing it on.
_REPLY_PREFIX_RE = re.compile(
    r"^(?:(?:re|aw|antw(?:ort)?|sv|odp|ynt|va|r|rif|ref|res|回复|答复|回覆|отв(?:ет)?|απ|σχετ)"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]\s*)+"
)
# Out-of-office subjects as clients write them, in many languages.
_OOO_PHRASES = (
    "Out of Office", "Out of the Office", "Out of Office Auto-Reply", "Automatic reply",
    "Auto-Reply", "Auto Response", "Automatic response",
    "Abwesenheitsnotiz", "Automatische Antwort", "Abwesend", "Außer Haus",
    "Réponse automatique", "Absence du bureau", "Absent du bureau", "Message d'absence",
    "Respuesta automática", "Fuera de la oficina",
    "Risposta automatica", "Fuori sede", "Fuori ufficio",
    "Automatisch antwoord", "Afwezig",
    "Autosvar", "Frånvaro", "Automatiskt svar", "Automatisk svar", "Automaattinen vastaus",
    "Resposta automática", "Fora do escritório",
    "Odpowiedź automatyczna", "Automatyczna odpowiedź", "Automatická odpověď",
    "Автоответ", "Автоматический ответ", "Αυτόματη απάντηση", "Otomatik yanıt",
    "自動応答", "自動返信", "自动回复", "自動回覆", "자동 회신",
)  # fmt: skip
# The phrase must stand alone or be followed by ":" or a dash, so that a
# person asking "Out of office assistant does not work" is not an auto-reply.
_OOO_RE = re.compile(rf"^(?:{_phrase_pattern(_OOO_PHRASES)})(?=\s*[:：]|\s+[-–—]|\s*$)")
# Subjects of non-delivery reports (Postfix, Exim, sendmail, qmail, Exchange, Gmail).
_DSN_PHRASES = (
    "Undelivered Mail Returned to Sender", "Undelivered Mail", "Undeliverable",
    "Delivery Status Notification", "Unzustellbar", "Non remis", "No se puede entregar",
    "Non recapitabile", "Onbestelbaar", "Mail delivery failed", "Returned mail",
    "Delivery failure", "Delivery has failed", "Failure notice", "Message not delivered",
    "Nondeliverable mail", "Mail System Error", "Warning: could not send message",
    "Delayed Mail",
)  # fmt: skip
_DSN_SUBJECT_RE = re.compile(rf"^(?:{_phrase_pattern(_DSN_PHRASES)})")


def _strip_reply_prefixes(folded_subject: str) -> str:
    return _REPLY_PREFIX_RE.sub("", folded_subject, count=1)


def _is_ooo_subject(subject: str) -> bool:
    return bool(_OOO_RE.match(_strip_reply_prefixes(_fold(subject))))


def _is_dsn_subject(subject: str) -> bool:
    return bool(_DSN_SUBJECT_RE.match(_fold(subject)))


# --------------------------------------------------------------------------
# Signals, one function per rule; each yields its reasons

_Detector = Callable[[ParsedMessage], Iterator[str]]


def _own_reasons(msg: ParsedMessage, is_own: Callable[[str], bool], loop_id: str) -> list[str]:
    reasons: list[str] = []
    sender = _sender(msg)
    if sender and is_own(sender):
        reasons.append(f"sender {sender} is one of our own addresses")
    wanted = _fold(loop_id.strip().strip("<>")) if loop_id else ""
    if wanted:
        for value in msg.header_all("X-Loop"):
            # X-Loop is no standard: by convention it holds an address or a token.
            tokens = {_fold(t.strip("<>\"'")) for t in re.split(r"[\s,;]+", value)}
            if wanted in tokens or _fold(value.strip().strip("<>")) == wanted:
                reasons.append(_named("X-Loop", value))
                break
    return reasons


def _delivery_report(msg: ParsedMessage) -> Iterator[str]:
    # RFC 3464 section 2 / RFC 6522: a DSN is multipart/report; report-type=delivery-status.
    if _report_type(msg) == "delivery-status":
        yield "Content-Type: multipart/report; report-type=delivery-status"


def _exchange_ndr(msg: ParsedMessage) -> Iterator[str]:
    if msg.header("X-MS-Exchange-Message-Is-Ndr") is not None:
        yield "X-MS-Exchange-Message-Is-Ndr present"


def _daemon_sender(msg: ParsedMessage) -> Iterator[str]:
    sender = _sender(msg)
    if sender and _is_daemon(sender):
        yield f"sender {sender}"


def _bounce_subject(msg: ParsedMessage) -> Iterator[str]:
    """A report subject counts only from the null sender (RFC 5321 section 4.5.5)
    or with Auto-Submitted: a person forwarding a bounce keeps a return path."""
    if not _is_dsn_subject(msg.subject):
        return
    return_path = (msg.header("Return-Path") or "").replace(" ", "")
    if return_path == "<>":
        yield f"Return-Path: <> with Subject: {_shorten(msg.subject)}"
    elif _auto_submitted_keyword(msg):
        yield f"Auto-Submitted with Subject: {_shorten(msg.subject)}"


def _auto_submitted_keyword(msg: ParsedMessage) -> str | None:
    # RFC 3834 section 5: any value but "no" marks automatic mail; parameters
    # ("auto-replied; owner-email=...") and comments are not part of the keyword.
    for value in msg.header_all("Auto-Submitted"):
        keyword = _keyword(value)
        if keyword and keyword != "no":
            return keyword
    return None


def _auto_submitted(msg: ParsedMessage) -> Iterator[str]:
    keyword = _auto_submitted_keyword(msg)
    if keyword:
        yield f"Auto-Submitted: {keyword}"


# Headers real autoresponders add instead of, or besides, Auto-Submitted.
_AUTOREPLY_HEADERS = (
    "X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-AutoReply-From", "X-Mail-Autoreply",
)  # fmt: skip
_FALSE_VALUES = frozenset({"no", "false", "0", "off"})


def _autoreply_headers(msg: ParsedMessage) -> Iterator[str]:
    for name in _AUTOREPLY_HEADERS:
        value = msg.header(name)
        if value is not None and _keyword(value) not in _FALSE_VALUES:
            yield _named(name, value)


def _precedence(msg: ParsedMessage, wanted: frozenset[str]) -> Iterator[str]:
    # Precedence is not standard (RFC 3834 section 2 notes its use); X-Precedence is its twin.
    for name in ("Precedence", "X-Precedence"):
        for value in msg.header_all(name):
            keyword = _keyword(value)
            if keyword in wanted:
                yield f"{name}: {keyword}"


def _precedence_auto_reply(msg: ParsedMessage) -> Iterator[str]:
    return _precedence(msg, frozenset({"auto_reply", "auto-reply"}))


def _precedence_bulk(msg: ParsedMessage) -> Iterator[str]:
    return _precedence(msg, frozenset({"bulk", "list", "junk"}))


_SUPPRESS_TOKENS = frozenset({"oof", "autoreply", "all"})


def _response_suppress(msg: ParsedMessage) -> Iterator[str]:
    # Exchange sets "X-Auto-Response-Suppress: All" on the auto-mail it sends itself.
    value = msg.header("X-Auto-Response-Suppress")
    if value is not None and _SUPPRESS_TOKENS & set(re.split(r"[\s,;]+", value.lower())):
        yield _named("X-Auto-Response-Suppress", value)


def _other_report(msg: ParsedMessage) -> Iterator[str]:
    # RFC 8098 read receipts, RFC 5965 feedback reports and the like: machine-made
    # (RFC 6522), but no delivery failure.
    report_type = _report_type(msg)
    if report_type == "disposition-notification":
        yield "Content-Type: multipart/report; report-type=disposition-notification (read receipt)"
    elif report_type is not None and report_type != "delivery-status":
        yield f"Content-Type: multipart/report; report-type={report_type or '(none)'}"


def _ooo_subject(msg: ParsedMessage) -> Iterator[str]:
    if _is_ooo_subject(msg.subject):
        yield f"Subject: {_shorten(msg.subject)}"


def _noreply_sender(msg: ParsedMessage) -> Iterator[str]:
    sender = _sender(msg)
    if sender and is_noreply_address(sender) and not _is_daemon(sender):
        yield f"sender {sender} looks like a no-reply address"


# RFC 2369 and RFC 2919 list headers, ezmlm's Mailing-List and Mailman's mark.
_LIST_HEADERS = (
    "List-Id", "List-Post", "List-Unsubscribe", "List-Subscribe", "List-Help",
    "List-Owner", "List-Archive", "Mailing-List", "X-Mailman-Version",
)  # fmt: skip


def _list_headers(msg: ParsedMessage) -> Iterator[str]:
    for name in _LIST_HEADERS:
        value = msg.header(name)
        if value is None:
            continue
        if name == "List-Id":
            # RFC 2919: the id is in angle brackets after an optional phrase.
            bracketed = re.search(r"<[^<>]+>", value)
            value = bracketed.group(0) if bracketed else value
        yield _named(name, value)


# In precedence order; OWN is decided first, HUMAN is what is left.
_RULES: tuple[tuple[MailClass, tuple[_Detector, ...]], ...] = (
    (MailClass.BOUNCE, (_delivery_report, _exchange_ndr, _daemon_sender, _bounce_subject)),
    (
        MailClass.AUTO_REPLY,
        (
            _auto_submitted,
            _autoreply_headers,
            _precedence_auto_reply,
            _response_suppress,
            _other_report,
            _ooo_subject,
            _noreply_sender,
        ),
    ),
    (MailClass.LIST, (_list_headers, _precedence_bulk)),
)


def classify(
    msg: ParsedMessage,
    raw: bytes,
    *,
    own_addresses: Callable[[str], bool] | frozenset[str],
    loop_id: str,
) -> Verdict:
    """Classify one mail (see the module docstring for the contract).

    `own_addresses` is a set of our addresses (compared case-insensitively) or
    a predicate called with a lower-cased address; `loop_id` is the value we
    put in X-Loop on the mail we send ("" to not look at X-Loop).
    """
    is_own = _own_predicate(own_addresses)
    own = _own_reasons(msg, is_own, loop_id)
    if own:
        return Verdict(MailClass.OWN, tuple(own))
    for mail_class, detectors in _RULES:
        reasons = tuple(reason for detector in detectors for reason in detector(msg))
        if not reasons:
            continue
        bounce = _bounce_report(msg, raw, is_own) if mail_class is MailClass.BOUNCE else None
        return Verdict(mail_class, reasons, bounce)
    return Verdict(MailClass.HUMAN)


def _bounce_report(
    msg: ParsedMessage, raw: bytes, is_own: Callable[[str], bool]
) -> BounceReport | None:
    report = parse_dsn(raw)
    if report is None:
        known = {a.address for a in (*msg.to, *msg.cc, *msg.reply_to)}
        sender = _sender(msg)
        if sender:
            known.add(sender)
        report = parse_bounce_text(msg.text, ignore=lambda a: a in known or is_own(a))
    if report is not None and report.original_message_id is None and msg.thread_ids:
        # A bounce answers the mail it returns: its In-Reply-To names it.
        report = replace(report, original_message_id=msg.thread_ids[0])
    return report
