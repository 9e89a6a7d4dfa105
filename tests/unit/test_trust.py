"""Agent trust: our MX's Authentication-Results (RFC 8601) aligned with From, secure by default."""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest

from helpdesk.mail.parse import parse
from helpdesk.mail.trust import (
    MAX_FIELD_LENGTH,
    NOT_CONFIGURED,
    TrustPolicy,
    TrustVerdict,
    agent_trust,
    authenticated_sender,
    authserv_id_of,
    parse_authres,
)
from helpdesk.values import Address, ParsedMessage
from tests.mailfactory import make_mail
from tests.unit.authres_samples import RELEVANT, SAMPLES, Sample

OURS = "mail.example.org"


def received(*results: str, sender: str = "Alice Agent <alice@example.com>") -> ParsedMessage:
    """A mail from `sender` with the given Authentication-Results fields on top, as delivered."""
    fields = b"".join(f"Authentication-Results: {value}\r\n".encode() for value in results)
    return parse(fields + make_mail(sender=sender, subject="#status resolved"))


def verdict(msg: ParsedMessage, authserv_id: str = OURS, fields: int = 1) -> TrustVerdict:
    return authenticated_sender(msg, trusted_authserv_id=authserv_id, trusted_fields=fields)


GMAIL = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.com header.s=20230601 header.b=Ab/Cd+12;\r\n"
    "       spf=pass (google.com: domain of alice@example.com designates 203.0.113.5 as\r\n"
    "        permitted sender) smtp.mailfrom=alice@example.com;\r\n"
    "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.com"
)


def test_gmail_dkim_pass_aligned() -> None:
    """Gmail's field with DKIM, SPF and DMARC pass trusts the sender; the reason names DKIM."""
    result = verdict(received(GMAIL), "mx.google.com")
    assert result == TrustVerdict(
        True, "dkim=pass for example.com aligned with From example.com (mx.google.com)"
    )


# Exchange Online writes its field without an authserv-id, so nobody can tell
# it apart from one the sender wrote; it carries the version only in ARC.
MICROSOFT_365 = (
    "spf=pass (sender IP is 40.107.22.51)\r\n"
    " smtp.mailfrom=example.com; dkim=pass (signature was verified)\r\n"
    " header.d=example.com;dmarc=pass action=none\r\n"
    " header.from=example.com;compauth=pass reason=100"
)


def test_microsoft_365_field_without_authserv_id_is_ignored() -> None:
    """Exchange Online's field has no authserv-id: it cannot be trusted, and the reason says so."""
    raw = (
        b"ARC-Authentication-Results: i=1; mx.microsoft.com 1; spf=pass\r\n"
        b" smtp.mailfrom=example.com; dmarc=pass action=none header.from=example.com;\r\n"
        b" dkim=pass header.d=example.com; arc=none\r\n"
    ) + make_mail(sender="alice@example.com")
    msg = parse(f"Authentication-Results: {MICROSOFT_365}\r\n".encode() + raw)
    result = verdict(msg, "mx.microsoft.com")
    assert not result.trusted
    assert result.reason == (
        "no Authentication-Results from mx.microsoft.com (1 field without authserv-id ignored)"
    )


def test_microsoft_365_style_results_under_a_trusted_id() -> None:
    """The same results behind an authserv-id and a version number are read, quirks and all."""
    result = verdict(received(f"{OURS} 1; {MICROSOFT_365}"))
    assert result.trusted
    assert result.reason == f"dkim=pass for example.com aligned with From example.com ({OURS})"


POSTFIX = (
    f"{OURS}; dmarc=pass (p=quarantine dis=none) header.from=example.com",
    f"{OURS};\r\n\tdkim=pass (2048-bit key; unprotected) header.d=example.com\r\n"
    "\theader.i=@example.com header.a=rsa-sha256 header.s=default header.b=Xy/Z+1ab;\r\n"
    "\tdkim-atps=neutral",
    f"{OURS}; spf=pass (sender SPF authorized) smtp.mailfrom=example.com",
)


def test_postfix_opendkim_opendmarc() -> None:
    """Three fields from one authserv-id (OpenDMARC, OpenDKIM, policyd-spf) are read together."""
    result = verdict(received(*POSTFIX), fields=3)
    assert result == TrustVerdict(
        True, f"dkim=pass for example.com aligned with From example.com ({OURS})"
    )


def test_three_fields_when_one_is_configured_fail_closed() -> None:
    """A setup that adds three fields but counts one is told so, and trusts nobody."""
    result = verdict(received(*POSTFIX))
    assert not result.trusted
    assert result.reason.startswith("forged Authentication-Results: 3 fields name")


def test_forged_field_from_another_authserv_id_is_ignored() -> None:
    """A sender's own "all pass" field does not count; ours, which failed, decides."""
    forged = "mail.example.org.attacker.example; dkim=pass header.d=example.com"
    also_forged = "mx.attacker.example; spf=pass smtp.mailfrom=example.com"
    ours = f"{OURS}; dkim=none (message not signed); spf=fail smtp.mailfrom=example.com"
    result = verdict(received(forged, also_forged, ours))
    assert result == TrustVerdict(False, f"dkim=none; spf=fail for example.com ({OURS})")


def test_forged_field_alone() -> None:
    """Only forged fields: nothing from us, and the reason counts what was ignored."""
    result = verdict(received("mx.attacker.example; dkim=pass header.d=example.com"))
    assert result == TrustVerdict(
        False, f"no Authentication-Results from {OURS} (1 field from other hosts ignored)"
    )


def test_misaligned_dkim() -> None:
    """A DKIM pass for the mailing service's domain is not a pass for the From domain."""
    result = verdict(received(f"{OURS}; dkim=pass header.d=mcsv.net header.s=k1; spf=none"))
    assert result == TrustVerdict(
        False, f"dkim=pass for mcsv.net is not aligned with From example.com; spf=none ({OURS})"
    )


def test_spf_pass_aligned_subdomain() -> None:
    """SPF pass for a subdomain of the From domain is aligned (RFC 7489 relaxed alignment)."""
    result = verdict(received(f"{OURS}; spf=pass smtp.mailfrom=bounce@mail.example.com"))
    assert result == TrustVerdict(
        True, f"spf=pass for mail.example.com aligned with From example.com ({OURS})"
    )


def test_spf_pass_not_aligned() -> None:
    """SPF pass for an unrelated bounce domain does not vouch for the From domain."""
    result = verdict(received(f"{OURS}; spf=pass smtp.mailfrom=bounces.other.net"))
    assert result == TrustVerdict(
        False, f"spf=pass for bounces.other.net is not aligned with From example.com ({OURS})"
    )


@pytest.mark.parametrize(
    ("domain", "aligned"),
    [
        ("example.com", True),
        ("EXAMPLE.COM.", True),
        ("eu.mail.example.com", True),
        ("notexample.com", False),
        ("example.com.attacker.example", False),
        ("com", True),  # an ancestor; no one but the registry can sign for it
    ],
)
def test_alignment(domain: str, aligned: bool) -> None:
    """Equal domains and subdomains align; look-alikes and suffix tricks do not."""
    assert verdict(received(f"{OURS}; dkim=pass header.d={domain}")).trusted is aligned


def test_sibling_subdomains_do_not_align() -> None:
    """Our approximation is stricter than DMARC: siblings under one organisation do not align."""
    msg = received(f"{OURS}; dkim=pass header.d=news.example.com", sender="a@help.example.com")
    assert not verdict(msg).trusted


def test_no_header() -> None:
    """Without any Authentication-Results field nothing is trusted."""
    result = verdict(parse(make_mail(sender="alice@example.com")))
    assert result == TrustVerdict(False, f"no Authentication-Results from {OURS}")


def test_several_fields_only_one_ours() -> None:
    """Fields of earlier hops are ignored; our single field decides."""
    fields = (
        "mx.google.com; dkim=fail header.d=example.com; spf=softfail smtp.mailfrom=example.com",
        "relay.partner.example; spf=pass smtp.mailfrom=example.com",
        f"{OURS}; dkim=pass header.d=example.com; spf=neutral smtp.mailfrom=example.com",
    )
    result = verdict(received(*fields))
    assert result == TrustVerdict(
        True, f"dkim=pass for example.com aligned with From example.com ({OURS})"
    )


@pytest.mark.parametrize(
    "outcome", ["none", "fail", "softfail", "neutral", "temperror", "permerror"]
)
def test_results_other_than_pass(outcome: str) -> None:
    """Every result but pass leaves the sender untrusted and is named in the reason."""
    result = verdict(received(f"{OURS}; spf={outcome} smtp.mailfrom=example.com"))
    assert result == TrustVerdict(False, f"spf={outcome} for example.com ({OURS})")


def test_syntax_tolerance() -> None:
    """Nested comments, quoted values, odd case, white space around "=" and ".", a version."""
    field = (
        f"{OURS.upper()} 1 (our (nested) comment; with semicolon);\r\n"
        '  DKIM = Pass (good\\) signature) Header . D = "example.com" header.s="sel";\r\n'
        "  x-custom=none"
    )
    result = verdict(received(field))
    assert result == TrustVerdict(
        True, f"dkim=pass for example.com aligned with From example.com ({OURS})"
    )


def test_dkim_identity_domain_when_header_d_is_missing() -> None:
    """`header.i` gives the signing domain when `header.d` is absent."""
    result = verdict(received(f"{OURS}; dkim=pass header.i=agent@EU.Example.com"))
    assert result.trusted
    assert result.reason.startswith("dkim=pass for eu.example.com aligned")


def test_dmarc_pass_counts_when_header_from_matches() -> None:
    """`dmarc=pass` for exactly the From domain is enough on its own."""
    assert verdict(received(f"{OURS}; dmarc=pass header.from=example.com")) == TrustVerdict(
        True, f"dmarc=pass for example.com matches From example.com ({OURS})"
    )
    other = verdict(received(f"{OURS}; dmarc=pass header.from=other.example"))
    assert other == TrustVerdict(
        False, f"dmarc=pass for other.example does not match From example.com ({OURS})"
    )


def test_dmarc_fail_overrides_a_relaxed_pass() -> None:
    """A verifier's dmarc=fail (strict alignment asked) outweighs our relaxed DKIM judgement."""
    field = f"{OURS}; dkim=pass header.d=mail.example.com; dmarc=fail header.from=example.com"
    assert verdict(received(field)) == TrustVerdict(False, f"dmarc=fail for example.com ({OURS})")


def test_no_result_and_no_from() -> None:
    """`authserv-id; none` names no method; a mail without From is never trusted."""
    assert verdict(received(f"{OURS}; none")) == TrustVerdict(
        False, f"no dkim, spf or dmarc result from {OURS}"
    )
    field = f"Authentication-Results: {OURS}; dkim=pass header.d=x.example\r\n"
    no_from = parse(f"{field}\r\nhi".encode())
    assert verdict(no_from) == TrustVerdict(False, "the mail has no From address")
    unset = verdict(received(GMAIL), "")
    assert unset == TrustVerdict(False, "no trusted authserv-id is configured")


@pytest.mark.parametrize(
    "value",
    [
        f"{OURS}; dkim=pass (unterminated comment header.d=example.com",
        f'{OURS}; dkim=pass header.d="example.com',
        f"{OURS}; ==;;; =pass header.d=; spf=",
        f"{OURS}; dkim=pass header.d=example.com\\",
        ";" * 10_000 + "(" * 10_000,
    ],
)
def test_garbage_never_raises(value: str) -> None:
    """Broken fields give a verdict, never an exception; nothing broken is trusted by accident."""
    result = verdict(received(value))
    assert isinstance(result.reason, str)
    assert not result.trusted or "aligned with From example.com" in result.reason


# --------------------------------------------------------------------------
# RFC 8601 section 5: only the fields our own servers added count


GENUINE_FAIL = f"{OURS}; dkim=none; spf=softfail smtp.mailfrom=example.com"
FORGED_PASS = f"{OURS}; dkim=pass header.d=example.com"


def test_forged_second_field_with_our_authserv_id() -> None:
    """Issue 12: our MX's field says softfail, the sender's own copy below says pass."""
    result = verdict(received(GENUINE_FAIL, FORGED_PASS))
    assert result == TrustVerdict(
        False,
        f"forged Authentication-Results: 2 fields name {OURS}, our servers add 1 field "
        "([security] trusted_authres_fields); the sender wrote the others",
    )


def test_forgery_is_untrusted_even_when_ours_passes() -> None:
    """A mail that carries a forgery is never trusted, even when our own field says pass."""
    ours = f"{OURS}; dkim=pass header.d=example.com; spf=pass smtp.mailfrom=example.com"
    result = verdict(received(ours, FORGED_PASS))
    assert not result.trusted
    assert result.reason.startswith("forged Authentication-Results")


def test_one_more_than_configured_is_a_forgery() -> None:
    """With three fields configured (OpenDKIM, OpenDMARC, SPF), a fourth is a forgery."""
    assert verdict(received(*POSTFIX), fields=3).trusted
    result = verdict(received(*POSTFIX, FORGED_PASS), fields=3)
    assert not result.trusted
    assert result.reason.startswith(f"forged Authentication-Results: 4 fields name {OURS}")


@pytest.mark.parametrize(
    "claim",
    [
        OURS.upper(),
        f"{OURS}.",
        f'"{OURS}"',
        f"{OURS} 1",
        f"{OURS} 2",  # an unknown version: still a claim to be us
        f"(comment) {OURS} (more)",
        f"=?utf-8?q?{OURS}?=",  # decoded by the mail parser before we read it
    ],
)
def test_every_spelling_of_our_authserv_id_counts_as_ours(claim: str) -> None:
    """A forgery cannot hide behind case, a final dot, quotes, a version, comments or RFC 2047."""
    result = verdict(received(GENUINE_FAIL, f"{claim}; dkim=pass header.d=example.com"))
    assert result.reason.startswith("forged Authentication-Results: 2 fields")


def received_through(*headers: str) -> ParsedMessage:
    """Alice's mail with these header lines (Received and Authentication-Results) on top."""
    return parse("".join(f"{h}\r\n" for h in headers).encode()
                 + make_mail(sender="Alice Agent <alice@example.com>"))


def test_field_below_a_foreign_received_is_a_forgery() -> None:
    """A field naming us below the Received of a host that is not ours was the sender's."""
    msg = received_through(
        f"Authentication-Results: {GENUINE_FAIL}",
        f"Received: from relay.attacker.example by {OURS} with ESMTPS id 4AbC",
        "Received: from laptop by relay.attacker.example with ESMTP id 77",
        f"Authentication-Results: {FORGED_PASS}",
    )
    assert verdict(msg).reason.startswith("forged Authentication-Results: 2 fields")


def test_gmail_order_our_field_below_our_own_received() -> None:
    """Gmail writes its field under its own Received; that position is genuine."""
    msg = received_through(
        "Received: by 2002:a05:7300:1234:b0:1a2:3b4c:5d6e with SMTP id abc;",
        "Received: from mail.example.com by mx.google.com with ESMTPS id x1;",
        "Received-SPF: pass (google.com: domain of alice@example.com designates 192.0.2.1)",
        f"Authentication-Results: {GMAIL}",
        "Received: from laptop by mail.example.com with ESMTPSA id 99;",
    )
    assert verdict(msg, "mx.google.com").trusted


def test_arc_authentication_results_are_not_ours() -> None:
    """ARC-Authentication-Results (RFC 8617) is another header: neither trusted nor a forgery."""
    msg = received_through(
        f"Authentication-Results: {OURS}; dkim=pass header.d=example.com",
        f"ARC-Authentication-Results: i=1; {OURS}; dkim=pass header.d=example.com",
    )
    assert verdict(msg).trusted


def test_an_oversized_field_of_ours_is_not_read() -> None:
    """A field naming us longer than MAX_FIELD_LENGTH is not read, so it cannot pass."""
    padded = f"{OURS}; dkim=pass header.d=example.com ({'x' * MAX_FIELD_LENGTH})"
    assert verdict(received(padded)) == TrustVerdict(
        False, f"Authentication-Results from {OURS} longer than {MAX_FIELD_LENGTH} characters: "
        "not read"
    )


# --------------------------------------------------------------------------
# Secure by default: [security] decides whether agent powers by mail exist at all


def test_no_authserv_id_and_no_trust_from_header_grants_nothing() -> None:
    """The shipped default: an agent's mail, however authenticated, gets no agent powers."""
    assert agent_trust(received(GMAIL), TrustPolicy()) == TrustVerdict(False, NOT_CONFIGURED)


def test_trust_from_header_is_an_explicit_choice() -> None:
    """`trust_from_header = true` trusts the From address alone, with no header at all."""
    msg = parse(make_mail(sender="alice@example.com"))
    assert agent_trust(msg, TrustPolicy(trust_from_header=True)) == TrustVerdict(
        True, "From address trusted ([security] trust_from_header = true)"
    )
    assert not agent_trust(msg, TrustPolicy(trust_from_header=False)).trusted


def test_authserv_id_wins_over_trust_from_header() -> None:
    """With both set, the MX's word is needed: trust_from_header does not weaken it."""
    policy = TrustPolicy(authserv_id=OURS, trust_from_header=True)
    assert not agent_trust(parse(make_mail(sender="alice@example.com")), policy).trusted
    assert not agent_trust(received(GENUINE_FAIL, FORGED_PASS), policy).trusted
    assert agent_trust(received(FORGED_PASS), policy).trusted


def test_policy_counts_fields() -> None:
    """The policy's field count reaches the check: three Postfix fields pass with 3, not 1."""
    assert agent_trust(received(*POSTFIX), TrustPolicy(authserv_id=OURS, authres_fields=3)).trusted
    assert not agent_trust(received(*POSTFIX), TrustPolicy(authserv_id=OURS)).trusted


# --------------------------------------------------------------------------
# The parser on real-world values (the set it was chosen on; see the module docstring)


def _relevant(value: str) -> tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...]:
    """The DKIM, SPF and DMARC results of `value` with the properties trust reads."""
    return tuple(
        (r.method, r.result,
         tuple(sorted((k, v) for k, v in r.properties if k in RELEVANT[r.method])))
        for r in parse_authres(value).results
        if r.method in RELEVANT
    )


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_real_world_values(sample: Sample) -> None:
    """Each value, delivered in a mail (folded lines and all), reads as its system meant it."""
    (value,) = received(sample.value).header_all("Authentication-Results")
    assert parse_authres(value).authserv_id == sample.authserv_id
    assert authserv_id_of(value) == sample.authserv_id
    if sample.results is not None:
        assert _relevant(value) == sample.results


@pytest.mark.parametrize(
    "value",
    ["", ";", "=", "==;", '"";x', "; mx.example.org; dkim=pass", "(", ")", "a=b c",
     '"mx.example.org" = pass', "mx.example.org (c) 1 (d)", "\\", "mx.example.org\\; x"],
)
def test_authserv_id_of_agrees_with_the_full_parse(value: str) -> None:
    """Forgery detection and trust read the same authserv-id from any value."""
    assert authserv_id_of(value) == parse_authres(value).authserv_id


def test_authserv_id_of_agrees_on_random_values() -> None:
    """The fast path and the tokens agree on many small values built from the tricky characters."""
    rng = random.Random(8601)
    alphabet = ' \t;=()"\\ax.1\xa0'
    for _ in range(20_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert authserv_id_of(value) == parse_authres(value).authserv_id, repr(value)


# --------------------------------------------------------------------------
# Hostile shapes (issue 12): linear time and bounded memory. The bounds are
# generous on purpose (a linear scan takes well under a second; the authres
# package, which is quadratic, needs 30 s for a 1 MB field).

HOSTILE_SECONDS = 5.0
HOSTILE_BYTES = 64 * 1024 * 1024


def agent_mail_with(fields: list[str]) -> ParsedMessage:
    """A parsed mail from an agent carrying these Authentication-Results values."""
    return ParsedMessage(
        message_id="hostile@example.com",
        message_id_synthetic=False,
        subject="#status closed",
        from_=Address("alice@example.com"),
        headers=tuple(("Authentication-Results", value) for value in fields),
    )


def bounded(check: object) -> TrustVerdict:
    """Run `check()` under the time bound, then again under the memory bound; its verdict.

    Twice, because tracing every allocation slows the run down several times.
    """
    started = time.perf_counter()
    result = check()  # type: ignore[operator]
    elapsed = time.perf_counter() - started
    assert elapsed < HOSTILE_SECONDS, f"took {elapsed:.1f} s"
    tracemalloc.start()
    try:
        check()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < HOSTILE_BYTES, f"peak {peak / 1e6:.0f} MB"
    assert isinstance(result, TrustVerdict)
    return result


NESTED = "(" * 500_000 + ")" * 500_000  # 1 MB of nested comments


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("1 MB of nested comments before our id", [f"{NESTED} {OURS}; {FORGED_PASS}"]),
        ("1 MB of nested comments after our id", [f"{OURS}; dkim=pass {NESTED}"]),
        ("1 MB unterminated comment", ["(" * 1_000_000]),
        ("1 MB of escapes in a comment", ["(" + "\\(" * 500_000]),
        ("1 MB unterminated quote", ['"' + "\\x" * 500_000]),
        ("1 MB of semicolons", [f"{OURS}" + ";" * 1_000_000]),
        ("100,000 foreign fields", [f"{OURS}; {FORGED_PASS}"]
         + [f"mx{i}.attacker.example; dkim=pass header.d=example.com" for i in range(100_000)]),
        ("100,000 fields naming us", [FORGED_PASS] * 100_000),
        ("100,000 id-less fields", ["dkim=pass header.d=example.com"] * 100_000),
    ],
)
def test_hostile_authentication_results_are_linear(name: str, fields: list[str]) -> None:
    """Huge or numerous fields cost bounded time and memory, and never grant trust."""
    result = bounded(lambda: verdict(agent_mail_with(fields)))
    assert not result.trusted or name == "100,000 foreign fields"


def test_full_parse_of_the_largest_readable_field_is_linear() -> None:
    """The full parse of a field of MAX_FIELD_LENGTH nested comments and pairs is fast."""
    half = MAX_FIELD_LENGTH // 4
    nested = f"{OURS}; dkim=pass " + "(" * half + ")" * half
    pairs = f"{OURS}; dkim=pass " + "a. b=c " * (MAX_FIELD_LENGTH // 8)
    for value in (nested, pairs):
        assert len(value) <= MAX_FIELD_LENGTH
        result = bounded(lambda v=value: TrustVerdict(bool(parse_authres(v).results), ""))
        assert result.trusted
