"""Whether mail from an agent's address may act as that agent (issue 12).

From addresses are forgeable, so agent powers by mail (commands, notes, a
reply relayed to customers from the support address) need proof.
`agent_trust(msg, policy)` is pure and never raises; it returns a
`TrustVerdict` whose `reason` says in plain words why (it ends up in an
`agent.untrusted` ticket event). The `TrustPolicy` comes from `[security]`:

* **Secure by default.** With neither `trusted_authserv_id` nor
  `trust_from_header = true`, nobody gets agent powers by mail: an agent's
  mail is a customer's mail. `trust_from_header = true` is the admin's
  knowing choice to trust the From address alone; `trusted_authserv_id`
  wins when both are set.
* **Only our own MX's Authentication-Results count** (RFC 8601 section 5).
  Anyone can write an Authentication-Results field into the mail they send,
  including one naming our authserv-id. Our servers *prepend* theirs, so the
  genuine fields are the topmost ones naming our authserv-id, and we know how
  many there are: `trusted_authres_fields` (default 1: Gmail, Rspamd, Exim
  and Mimecast write one field; Postfix with OpenDKIM + OpenDMARC + an SPF
  policy daemon writes one each, 3). A mail carrying *more* fields naming our
  authserv-id than that carries a forged one, and is untrusted with the
  reason "forged Authentication-Results", whatever the fields say. RFC 8601
  section 5 also asks the MX to delete such fields on the way in; many do
  not (Postfix does not by default), so we never rely on it.

  Why a count rather than "above the first Received: that is not ours":
  which Received fields are "ours" cannot be told from the mail (Gmail's
  inner hops write `Received: by 2002:a05:...` with an IPv6 address; host
  names differ per hop), Gmail writes its Authentication-Results *below* its
  own Received field, and a sender talking straight to our MX has no
  Received field of its own above which its forgery could be caught: the
  forged field sits directly under ours. A count needs no host list and
  catches that case. Its limit: a filter that adds its field only sometimes
  (OpenDKIM without `AlwaysAddARHeader`) leaves a slot an attacker's field
  can fill; count only fields that are always added, or make the MX delete
  incoming fields with its authserv-id. An OpenDMARC `dmarc=fail` for the
  From domain vetoes any pass either way (below).
* The sender is trusted when a trusted field reports any of: `dkim=pass`
  whose `header.d` (else the domain of `header.i`) is aligned with the From
  domain; `spf=pass` whose `smtp.mailfrom` domain is aligned; `dmarc=pass`
  whose `header.from` equals the From domain. A `dmarc=fail` for the From
  domain outweighs any pass.
* Alignment is RFC 7489 section 3.1 "relaxed" alignment, which compares
  organizational domains. Without a Public Suffix List we approximate it as:
  the domains are equal, or one is a subdomain of the other. That is stricter
  than DMARC (sibling subdomains such as `mail.example.com` and
  `news.example.com` do not align), never looser.
* A field without an authserv-id (Exchange Online writes
  `Authentication-Results: spf=pass (sender IP is ...) smtp.mailfrom=...`)
  cannot be attributed to anyone and is ignored.

**The parser: ours, not `authres`.** The `authres` package (1.2.0, the RFC
8601 parser maintained by the dkimpy author) was measured against ours on the
real-world test set in `tests/unit/authres_samples.py` (44 values: Gmail,
Microsoft 365, OpenDKIM, OpenDMARC, OpenARC, Rspamd, Proofpoint, Mimecast,
Cloudflare, Fastmail, Yahoo, Exim, Amazon SES; folded, commented, versioned,
odd spacing, malformed). Ours reads all 44 as expected, `authres` 33. It
rejects a whole field for one flaw anywhere in it, so genuine fields from
Yahoo (a trailing ";") and Amazon SES (loose `client-ip=...;` segments) lose
their passes; it rejects a quoted authserv-id (legal in RFC 8601) and any
version but 1; it cannot tell Microsoft 365's id-less field from a field
whose authserv-id is "spf"; and a field it rejects has no authserv-id at all,
while forgery detection needs the authserv-id most on malformed input. It is
also quadratic (each token rebuilds the rest of the string with `re.sub`:
2.4 s for a 137 KB field, 23 s for 550 KB, where ours takes 0.09 s and
0.6 s, same run) and recursive on nested comments (1,000 levels raise
RecursionError). Ours scans left to right with regular-expression jumps
(runs of parentheses and escapes are one step), linear in the field:
authserv-ids are read lazily, so a 1 MB field of nested comments or 100,000
fields cost a fraction of a second, and only the fields naming our
authserv-id are parsed in full (each at most `MAX_FIELD_LENGTH` characters,
else it is not trusted).

Syntax understood (RFC 8601 section 2.2 with RFC 5322 comments and quoted
strings): nested comments with escapes, quoted values and quoted local parts
(`"john doe"@example.com`), white space around "=", "/" and ".", folded
lines (unfolded by the mail parser), keys in any case, method versions
(`dkim/1`), several methods per field, trailing or doubled ";".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from helpdesk.values import ParsedMessage

__all__ = [
    "DEFAULT_AUTHRES_FIELDS",
    "MAX_FIELD_LENGTH",
    "NOT_CONFIGURED",
    "AuthResults",
    "MethodResult",
    "TrustPolicy",
    "TrustVerdict",
    "agent_trust",
    "authenticated_sender",
    "authserv_id_of",
    "parse_authres",
]

_HEADER = "Authentication-Results"
_METHODS = ("dkim", "spf", "dmarc")  # the ones that say anything about the From domain
# A trusted field longer than this is not read: real ones are under 2 KB, and
# reading a cut-off field could turn "example.com.attacker.example" into a pass.
MAX_FIELD_LENGTH = 20_000
# How many Authentication-Results fields naming our authserv-id our servers add.
DEFAULT_AUTHRES_FIELDS = 1
NOT_CONFIGURED = (
    "agent powers by mail are off: [security] sets neither trusted_authserv_id "
    "nor trust_from_header"
)


@dataclass(frozen=True, slots=True)
class TrustVerdict:
    """Whether agent powers may be granted to the From address, and why (plain words)."""

    trusted: bool
    reason: str


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """`[security]`: what makes mail from an agent's address the agent's (module docstring)."""

    authserv_id: str | None = None
    authres_fields: int = DEFAULT_AUTHRES_FIELDS
    trust_from_header: bool = False


def agent_trust(msg: ParsedMessage, policy: TrustPolicy) -> TrustVerdict:
    """Whether `msg`, from an agent's address, may act as that agent under `policy`."""
    if policy.authserv_id:
        return authenticated_sender(
            msg, trusted_authserv_id=policy.authserv_id, trusted_fields=policy.authres_fields
        )
    if policy.trust_from_header:
        return TrustVerdict(True, "From address trusted ([security] trust_from_header = true)")
    return TrustVerdict(False, NOT_CONFIGURED)


# --------------------------------------------------------------------------
# Lexing (RFC 8601 section 2.2, with RFC 5322 comments and quoted strings)

_SPECIALS = ";="
# "/" and "." stay inside atoms: DKIM's header.b is base64 ("header.b=Ab/c+d"),
# and "dkim/1" or "header.d" are read as one key anyway (see _continues).
_ATOM_RE = re.compile(r'[^ \t\r\n;=("]+')
_SPACE_RE = re.compile(r"\s+")
# A value that starts with an atom: the atom and the first character after it.
_HEAD_RE = re.compile(r'\s*+([^ \t\r\n;=("]++)\s*+(.?)', re.DOTALL)  # possessive: as _tokens
_COMMENT_RUN_RE = re.compile(r"\(+|\)+|(?:\\.)+", re.DOTALL)
# The content and the closing quote if any; "unrolled" and possessive, so the
# engine neither backtracks nor keeps a backtracking record per quoted-pair.
_QUOTED_RE = re.compile(r'"([^"\\]*+(?:\\.[^"\\]*+)*+)"?', re.DOTALL)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "atom", "quoted", ";" or "="
    text: str


def _tokens(value: str) -> Iterator[_Token]:
    """Atoms, quoted strings and the specials ";" and "="; comments are dropped.

    Lazy and linear: each character is looked at a bounded number of times,
    so a caller that needs the first two tokens pays only for reaching them.
    """
    position, end = 0, len(value)
    while position < end:
        char = value[position]
        if char.isspace():
            space = _SPACE_RE.match(value, position)
            position = space.end() if space else position + 1
        elif char == "(":
            position = _skip_comment(value, position)
        elif char == '"':
            text, position = _quoted(value, position)
            yield _Token("quoted", text)
        elif char in _SPECIALS:
            yield _Token(char, char)
            position += 1
        else:
            atom = _ATOM_RE.match(value, position)
            stop = atom.end() if atom else position + 1  # a lone ")" is junk: its own atom
            yield _Token("atom", value[position:stop])
            position = stop


def _skip_comment(value: str, position: int) -> int:
    """The index after the comment that starts at `position` (comments nest, RFC 5322 3.2.2).

    Runs of "(" or ")" and of quoted-pairs are one step each, so a megabyte of
    nesting costs a handful of regular-expression matches.
    """
    depth = 0
    for run in _COMMENT_RUN_RE.finditer(value, position):
        text = run.group()
        if text[0] == "(":
            depth += len(text)
        elif text[0] == ")":
            if len(text) >= depth:
                return run.start() + depth
            depth -= len(text)
        # else quoted-pairs: escaped parentheses are plain text
    return len(value)  # unterminated: the rest is comment


def _quoted(value: str, position: int) -> tuple[str, int]:
    """The content of the quoted string at `position` and the index after it.

    Unterminated: the rest of the value is the string.
    """
    found = _QUOTED_RE.match(value, position)
    assert found is not None  # the pattern matches any text after the opening quote
    # Splitting on quoted-pairs keeps the escaped characters (the group) in
    # place: joining is unescaping, in one pass at C speed.
    return "".join(_QUOTED_PAIR_RE.split(found.group(1))), found.end()


# --------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo: `method=result` and its properties (`ptype.property` -> value)."""

    method: str
    result: str
    properties: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str:
        """The first value of property `key` ("header.d"), or ""."""
        return next((value for name, value in self.properties if name == key), "")


@dataclass(frozen=True, slots=True)
class AuthResults:
    """One Authentication-Results field; `authserv_id` is None when it names none."""

    authserv_id: str | None
    results: tuple[MethodResult, ...]


def _normalised_id(text: str) -> str:
    return text.strip().lower().rstrip(".")


def authserv_id_of(value: str) -> str | None:
    """The authserv-id a field value names (lower-case), or None.

    Reads no further than the second token, so it costs the distance to it
    whatever follows. Agrees with `parse_authres(value).authserv_id`.
    """
    head = _HEAD_RE.match(value)
    if head is not None and head.group(2) != "(":
        # The common shape, an atom and what follows it, in one match: the same
        # answer the tokens give (a comment after the atom needs them).
        return None if head.group(2) == "=" else _normalised_id(head.group(1)) or None
    tokens = _tokens(value)
    first = next(tokens, None)
    if first is None or first.kind not in ("atom", "quoted"):
        return None
    second = next(tokens, None)
    if second is not None and second.kind == "=":
        return None  # "spf=pass ...": a result, no authserv-id (Exchange Online)
    return _normalised_id(first.text) or None


def parse_authres(value: str) -> AuthResults:
    """One field value: its authserv-id and results (RFC 8601 section 2.2); never raises.

    A head other than `authserv-id [1]` (an unknown version, a missing ";")
    is malformed, and a value longer than `MAX_FIELD_LENGTH` is not read: the
    authserv-id is kept, the results are not read.
    """
    if len(value) > MAX_FIELD_LENGTH:
        return AuthResults(authserv_id_of(value), ())
    segments = _segments(_tokens(value))
    head = segments[0]
    if not head or head[0].kind not in ("atom", "quoted"):
        return AuthResults(None, ())
    if len(head) > 1 and head[1].kind == "=":
        return AuthResults(None, _results(segments))  # no authserv-id (Exchange Online)
    authserv_id = _normalised_id(head[0].text) or None
    rest = head[1:]
    readable = not rest or (len(rest) == 1 and rest[0].kind == "atom" and rest[0].text == "1")
    return AuthResults(authserv_id, _results(segments[1:]) if readable else ())


def _segments(tokens: Iterable[_Token]) -> list[list[_Token]]:
    """Tokens split at ";"; empty segments are kept so that the head stays first."""
    segments: list[list[_Token]] = [[]]
    for token in tokens:
        if token.kind == ";":
            segments.append([])
        else:
            segments[-1].append(token)
    return segments


def _results(segments: list[list[_Token]]) -> tuple[MethodResult, ...]:
    results: list[MethodResult] = []
    for segment in segments:
        pairs = _pairs(segment)
        if not pairs:
            continue  # empty, "none" (RFC 8601 section 2.2 no-result) or junk
        method, result = pairs[0]
        method = method.split("/", 1)[0]  # method-version, e.g. "dkim/1"
        results.append(MethodResult(method, result.lower(), tuple(pairs[1:])))
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
                text, index = _value(segment, index + 1)
                pairs.append(("".join(key_parts).lower(), text))
            key_parts = []
        elif token.kind == "atom" and _continues(key_parts, token.text):
            key_parts.append(token.text)
        elif token.kind == "atom":
            key_parts = [token.text]  # anything before it was junk, not part of a key
        else:
            key_parts = []
        index += 1
    return pairs


def _value(segment: list[_Token], index: int) -> tuple[str, int]:
    """The value at `index` and the index of its last token: `"john doe"@example.com` is one."""
    token = segment[index]
    after = segment[index + 1] if index + 1 < len(segment) else None
    if token.kind == "quoted" and after is not None and after.text.startswith("@"):
        return f'"{token.text}"{after.text}', index + 1
    return token.text, index


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


def _judge(result: MethodResult, from_domain: str) -> _Finding | None:
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
    result: MethodResult, domain: str, from_domain: str, property_names: str
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


def _dmarc_finding(result: MethodResult, from_domain: str) -> _Finding:
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


def _described(result: MethodResult, domain: str) -> str:
    label = f"{result.method}={result.result}"
    return f"{label} for {domain}" if domain else label


# --------------------------------------------------------------------------
# The verdict


def authenticated_sender(
    msg: ParsedMessage,
    *,
    trusted_authserv_id: str,
    trusted_fields: int = DEFAULT_AUTHRES_FIELDS,
) -> TrustVerdict:
    """Whether our MX's Authentication-Results vouch for the From domain (module docstring).

    `trusted_fields` is how many fields naming `trusted_authserv_id` our
    servers add; a mail with more carries a forgery and is never trusted.
    """
    wanted = _normalised_id(trusted_authserv_id)
    if not wanted:
        return TrustVerdict(False, "no trusted authserv-id is configured")
    if msg.from_ is None:
        return TrustVerdict(False, "the mail has no From address")
    values = msg.header_all(_HEADER)
    ids = [authserv_id_of(value) for value in values]
    ours = [value for value, found in zip(values, ids, strict=True) if found == wanted]
    if len(ours) > trusted_fields:
        return TrustVerdict(False, _forged(wanted, len(ours), trusted_fields))
    if not ours:
        return TrustVerdict(False, _nothing_from(wanted, ids))
    if any(len(value) > MAX_FIELD_LENGTH for value in ours):
        return TrustVerdict(
            False, f"Authentication-Results from {wanted} longer than {MAX_FIELD_LENGTH} "
            "characters: not read"
        )
    return _verdict(wanted, [parse_authres(value) for value in ours], _domain(msg.from_.address))


def _verdict(wanted: str, fields: list[AuthResults], from_domain: str) -> TrustVerdict:
    findings = [
        finding
        for parsed in fields
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


def _forged(wanted: str, found: int, trusted: int) -> str:
    """The reason when more fields name our authserv-id than our servers add."""
    fields = "field" if trusted == 1 else "fields"
    return (
        f"forged Authentication-Results: {found} fields name {wanted}, our servers add "
        f"{trusted} {fields} ([security] trusted_authres_fields); the sender wrote the others"
    )


def _nothing_from(wanted: str, ids: list[str | None]) -> str:
    """The reason when no field is ours, naming what was ignored."""
    anonymous = sum(1 for found in ids if found is None)
    ignored = [
        f"{count} {'field' if count == 1 else 'fields'} {what} ignored"
        for count, what in (
            (len(ids) - anonymous, "from other hosts"),
            (anonymous, "without authserv-id"),
        )
        if count
    ]
    suffix = f" ({', '.join(ignored)})" if ignored else ""
    return f"no Authentication-Results from {wanted}{suffix}"
