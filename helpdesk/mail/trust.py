"""Whether the From address of a mail was authenticated by a host we trust.

`authenticated_sender(msg, trusted_authserv_id=...)` is pure and never raises.
It reads the `Authentication-Results` header fields of RFC 8601 and returns a
`TrustVerdict` whose `reason` says in plain words why the sender is trusted or
not (it ends up in a ticket event).

Contract:

* Only header fields whose authserv-id (the first token before ";",
  optionally followed by a version number, compared case-insensitively)
  equals `trusted_authserv_id` count. Anyone can write an
  Authentication-Results field into the mail they send; only the one our own
  border MTA (or mailbox provider) adds means anything. RFC 8601 section 5
  asks that MTA to delete fields that claim its authserv-id on the way in, so
  a deployment must name an authserv-id whose MTA does that (Gmail, OpenDKIM,
  OpenDMARC and Rspamd do).
* A field without an authserv-id (Exchange Online writes
  `Authentication-Results: spf=pass (sender IP is ...) smtp.mailfrom=...`)
  cannot be attributed to anyone and is ignored.
* The sender is trusted when one trusted field reports any of:
  `dkim=pass` whose `header.d` (else the domain of `header.i`) is aligned with
  the From domain; `spf=pass` whose `smtp.mailfrom` domain is aligned with the
  From domain; `dmarc=pass` whose `header.from` equals the From domain.
* Alignment is RFC 7489 section 3.1 "relaxed" alignment, which compares
  organizational domains. Without a Public Suffix List we approximate it as:
  the domains are equal, or one is a subdomain of the other. That is stricter
  than DMARC (sibling subdomains such as `mail.example.com` and
  `news.example.com` do not align), never looser.
* Comments in parentheses (nested, with escapes), quoted values, white space
  around "=", "/" and ".", folded lines, keys in any case and several methods
  per field are understood (RFC 8601 section 2.2 grammar).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from helpdesk.values import ParsedMessage

__all__ = ["TrustVerdict", "authenticated_sender"]

_HEADER = "Authentication-Results"
_METHODS = ("dkim", "spf", "dmarc")  # the ones that say anything about the From domain
_MAX_HEADER_LENGTH = 20_000  # real fields are a few hundred characters


@dataclass(frozen=True, slots=True)
class TrustVerdict:
    """Whether agent powers may be granted to the From address, and why (plain words)."""

    trusted: bool
    reason: str


# --------------------------------------------------------------------------
# Lexing (RFC 8601 section 2.2, with RFC 5322 comments and quoted strings)

_SPECIALS = ";="
# "/" and "." stay inside atoms: DKIM's header.b is base64 ("header.b=Ab/c+d"),
# and "dkim/1" or "header.d" are read as one key anyway (see _continues).
_ATOM_END = frozenset(' \t\r\n;=("')


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "atom", "quoted", ";" or "="
    text: str


def _tokens(value: str) -> Iterator[_Token]:
    """Atoms, quoted strings and the specials ";" and "="; comments are dropped."""
    position, end = 0, len(value)
    while position < end:
        char = value[position]
        if char.isspace():
            position += 1
        elif char == "(":
            position = _skip_comment(value, position)
        elif char == '"':
            text, position = _quoted(value, position)
            yield _Token("quoted", text)
        elif char in _SPECIALS:
            yield _Token(char, char)
            position += 1
        else:
            start = position
            while position < end and value[position] not in _ATOM_END:
                position += 1
            yield _Token("atom", value[start:position])


def _skip_comment(value: str, position: int) -> int:
    """The index after the comment that starts at `position` (comments nest, RFC 5322 3.2.2)."""
    depth = 0
    while position < len(value):
        char = value[position]
        if char == "\\":
            position += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    return position  # unterminated: the rest is comment


def _quoted(value: str, position: int) -> tuple[str, int]:
    """The content of the quoted string at `position` and the index after it."""
    out: list[str] = []
    position += 1
    while position < len(value):
        char = value[position]
        if char == "\\" and position + 1 < len(value):
            out.append(value[position + 1])
            position += 2
            continue
        if char == '"':
            return "".join(out), position + 1
        out.append(char)
        position += 1
    return "".join(out), position


# --------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class _Result:
    """One resinfo: `method=result` and its properties (`ptype.property` -> value)."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str:
        """The first value of property `key` ("header.d"), or ""."""
        return next((value for name, value in self.properties if name == key), "")


@dataclass(frozen=True, slots=True)
class _Field:
    """One Authentication-Results field; `authserv_id` is None when it has none."""

    authserv_id: str | None
    results: tuple[_Result, ...]


def _parse_field(value: str) -> _Field:
    segments = _segments(list(_tokens(value[:_MAX_HEADER_LENGTH])))
    if not segments:
        return _Field(None, ())
    first = segments[0]
    if any(token.kind == "=" for token in first):
        # No authserv-id at all (Exchange Online): the first segment is a result.
        return _Field(None, _results(segments))
    words = [token.text for token in first if token.kind in ("atom", "quoted")]
    # RFC 8601 section 2.2: authserv-id [ CFWS authres-version ].
    authserv_id = words[0].lower().rstrip(".") if words else None
    return _Field(authserv_id, _results(segments[1:]))


def _segments(tokens: list[_Token]) -> list[list[_Token]]:
    segments: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == ";":
            segments.append([])
        else:
            segments[-1].append(token)
    return [segment for segment in segments if segment]


def _results(segments: list[list[_Token]]) -> tuple[_Result, ...]:
    results: list[_Result] = []
    for segment in segments:
        pairs = _pairs(segment)
        if not pairs:
            continue  # "none" (RFC 8601 section 2.2 no-result) or junk
        method, result = pairs[0]
        method = method.split("/", 1)[0]  # method-version, e.g. "dkim/1"
        results.append(_Result(method, result.lower(), tuple(pairs[1:])))
    return tuple(results)


def _pairs(segment: list[_Token]) -> list[tuple[str, str]]:
    """`key=value` pairs of one resinfo, keys lower-case; "header . d" is "header.d"."""
    pairs: list[tuple[str, str]] = []
    key_parts: list[str] = []
    index = 0
    while index < len(segment):
        token = segment[index]
        if token.kind == "=":
            value = segment[index + 1] if index + 1 < len(segment) else None
            if key_parts and value is not None and value.kind in ("atom", "quoted"):
                pairs.append(("".join(key_parts).lower(), value.text))
                index += 1
            key_parts = []
        elif token.kind == "atom" and _continues(key_parts, token.text):
            key_parts.append(token.text)
        elif token.kind == "atom":
            key_parts = [token.text]  # anything before it was junk, not part of a key
        else:
            key_parts = []
        index += 1
    return pairs


def _continues(key_parts: list[str], text: str) -> bool:
    """Whether an atom continues the key being read: "header" ". d", "dkim /" "1"."""
    if not key_parts:
        return False
    return key_parts[-1].endswith((".", "/")) or text.startswith((".", "/"))


# --------------------------------------------------------------------------
# Domains and alignment


def _domain(value: str) -> str:
    """The domain of `user@domain`, `@domain` or `domain`, lower-case, without a final dot."""
    return value.strip().strip("<>").rpartition("@")[2].strip().lower().rstrip(".")


def _aligned(domain: str, from_domain: str) -> bool:
    """RFC 7489 section 3.1 relaxed alignment, approximated (see the module docstring)."""
    if "" in domain.split(".") or "" in from_domain.split("."):
        return False  # empty, or an empty label: not a domain anyone can hold
    return (
        domain == from_domain
        or domain.endswith("." + from_domain)
        or from_domain.endswith("." + domain)
    )


@dataclass(frozen=True, slots=True)
class _Finding:
    """What one result says about the From domain, in the words the reason uses."""

    method: str
    passed: bool
    text: str
    veto: bool = False  # dmarc=fail for the From domain: the domain owner says no


def _judge(result: _Result, from_domain: str) -> _Finding | None:
    """What one result says about the From domain; None for methods that say nothing."""
    if result.method == "dkim":
        domain = _domain(result.get("header.d")) or _domain(result.get("header.i"))
        return _alignment_finding(result, domain, from_domain, "header.d or header.i")
    if result.method == "spf":
        domain = _domain(result.get("smtp.mailfrom"))
        return _alignment_finding(result, domain, from_domain, "smtp.mailfrom")
    if result.method == "dmarc":
        return _dmarc_finding(result, from_domain)
    return None


def _alignment_finding(
    result: _Result, domain: str, from_domain: str, property_names: str
) -> _Finding:
    method = result.method
    if result.result != "pass":
        return _Finding(method, False, _described(result, domain))
    if not domain:
        return _Finding(method, False, f"{method}=pass without {property_names}")
    if _aligned(domain, from_domain):
        return _Finding(method, True, f"{method}=pass for {domain} aligned with From {from_domain}")
    return _Finding(
        method, False, f"{method}=pass for {domain} is not aligned with From {from_domain}"
    )


def _dmarc_finding(result: _Result, from_domain: str) -> _Finding:
    domain = _domain(result.get("header.from"))
    if result.result == "pass":
        if domain == from_domain:
            return _Finding("dmarc", True, f"dmarc=pass for {domain} matches From {from_domain}")
        if not domain:
            return _Finding("dmarc", False, "dmarc=pass without header.from")
        return _Finding(
            "dmarc", False, f"dmarc=pass for {domain} does not match From {from_domain}"
        )
    # RFC 7489 section 3.1: a domain may demand strict alignment, which our
    # approximation of relaxed alignment cannot see; the verifier's "fail"
    # for the From domain therefore outweighs a DKIM or SPF pass we judge aligned.
    veto = result.result == "fail" and domain in ("", from_domain)
    return _Finding("dmarc", False, _described(result, domain), veto=veto)


def _described(result: _Result, domain: str) -> str:
    label = f"{result.method}={result.result}"
    return f"{label} for {domain}" if domain else label


# --------------------------------------------------------------------------
# The verdict


def authenticated_sender(msg: ParsedMessage, *, trusted_authserv_id: str) -> TrustVerdict:
    """Whether a trusted Authentication-Results field vouches for the From domain."""
    wanted = trusted_authserv_id.strip().lower().rstrip(".")
    if not wanted:
        return TrustVerdict(False, "no trusted authserv-id is configured")
    if msg.from_ is None:
        return TrustVerdict(False, "the mail has no From address")
    from_domain = _domain(msg.from_.address)
    fields = [_parse_field(value) for value in msg.header_all(_HEADER)]
    ours = [parsed for parsed in fields if parsed.authserv_id == wanted]
    if not ours:
        return TrustVerdict(False, _nothing_from(wanted, fields))
    findings = [
        finding
        for parsed in ours
        for result in parsed.results
        if (finding := _judge(result, from_domain)) is not None
    ]
    if not findings:
        return TrustVerdict(False, f"no dkim, spf or dmarc result from {wanted}")
    veto = next((finding for finding in findings if finding.veto), None)
    if veto is not None:
        return TrustVerdict(False, f"{veto.text} ({wanted})")
    for method in _METHODS:  # the reason names DKIM first: it survives forwarding
        for finding in findings:
            if finding.passed and finding.method == method:
                return TrustVerdict(True, f"{finding.text} ({wanted})")
    return TrustVerdict(False, "; ".join(finding.text for finding in findings) + f" ({wanted})")


def _nothing_from(wanted: str, fields: list[_Field]) -> str:
    """The reason when no field is ours, naming what was ignored."""
    anonymous = sum(1 for parsed in fields if parsed.authserv_id is None)
    ignored = [
        f"{count} {'field' if count == 1 else 'fields'} {what} ignored"
        for count, what in (
            (len(fields) - anonymous, "from other hosts"),
            (anonymous, "without authserv-id"),
        )
        if count
    ]
    suffix = f" ({', '.join(ignored)})" if ignored else ""
    return f"no Authentication-Results from {wanted}{suffix}"
