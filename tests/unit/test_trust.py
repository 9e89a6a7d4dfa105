"""authenticated_sender: trusted Authentication-Results (RFC 8601) aligned with From."""

from __future__ import annotations

import pytest

from helpdesk.mail.parse import parse
from helpdesk.mail.trust import TrustVerdict, authenticated_sender
from helpdesk.values import ParsedMessage
from tests.mailfactory import make_mail

OURS = "mail.example.org"


def received(*results: str, sender: str = "Alice Agent <alice@example.com>") -> ParsedMessage:
    """A mail from `sender` with the given Authentication-Results fields on top, as delivered."""
    fields = b"".join(f"Authentication-Results: {value}\r\n".encode() for value in results)
    return parse(fields + make_mail(sender=sender, subject="#status resolved"))


def verdict(msg: ParsedMessage, authserv_id: str = OURS) -> TrustVerdict:
    return authenticated_sender(msg, trusted_authserv_id=authserv_id)


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
    result = verdict(received(*POSTFIX))
    assert result == TrustVerdict(
        True, f"dkim=pass for example.com aligned with From example.com ({OURS})"
    )


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
