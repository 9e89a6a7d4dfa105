"""Authentication-Results values as real mail servers write them, with what they say.

The test set the parser in `helpdesk/mail/trust.py` was chosen on (see its
module docstring): each sample is the raw header value as it arrives (folded
lines included; tests run it through `parse()` like a real mail), the
authserv-id a correct reader finds, and the DKIM, SPF and DMARC results with
the properties trust decisions read (`header.d`, `header.i`, `smtp.mailfrom`,
`header.from`). `results=None` marks malformed values where no reading is
"right": a reader must only find the authserv-id (forgery detection needs it)
and never raise or hang.

The shapes follow what each system writes (field order, comments, quoting,
spacing); domains, addresses and signatures are the documentation ones.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a trust decision reads from each method; other properties do not matter.
RELEVANT = {
    "dkim": ("header.d", "header.i"),
    "spf": ("smtp.mailfrom",),
    "dmarc": ("header.from",),
}

Result = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Sample:
    name: str
    value: str
    authserv_id: str | None
    results: tuple[Result, ...] | None


def r(method: str, result: str, **properties: str) -> Result:
    """One expected result; property names with "_" for "." (header_d is header.d)."""
    props = tuple(sorted((key.replace("_", "."), value) for key, value in properties.items()))
    return (method, result, props)


SAMPLES: tuple[Sample, ...] = (
    # --- Gmail (mx.google.com) -------------------------------------------------------
    Sample(
        "gmail",
        "mx.google.com;\r\n"
        "       dkim=pass header.i=@example.com header.s=20230601 header.b=AbCd1234;\r\n"
        "       spf=pass (google.com: domain of alice@example.com designates 209.85.220.41 as"
        " permitted sender) smtp.mailfrom=alice@example.com;\r\n"
        "       dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from=example.com",
        "mx.google.com",
        (r("dkim", "pass", header_i="@example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "gmail-arc-quoted-mailfrom",
        "mx.google.com;\r\n"
        '       dkim=pass header.i=@example.com header.s=google header.b="Xq/9+aZ2";\r\n'
        "       arc=pass (i=1 spf=pass spfdomain=mg.example.net dkim=pass dkdomain=example.com"
        " dmarc=pass fromdomain=example.com);\r\n"
        "       spf=pass (google.com: domain of bounce+1a2b=example.com@mg.example.net"
        " designates 198.51.100.7 as permitted sender)"
        ' smtp.mailfrom="bounce+1a2b=example.com@mg.example.net";\r\n'
        "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com",
        "mx.google.com",
        (r("dkim", "pass", header_i="@example.com"),
         r("spf", "pass", smtp_mailfrom="bounce+1a2b=example.com@mg.example.net"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "gmail-softfail",
        "mx.google.com;\r\n"
        "       spf=softfail (google.com: domain of transitioning alice@example.com does not"
        " designate 203.0.113.9 as permitted sender) smtp.mailfrom=alice@example.com;\r\n"
        "       dmarc=fail (p=NONE sp=NONE dis=NONE) header.from=example.com",
        "mx.google.com",
        (r("spf", "softfail", smtp_mailfrom="alice@example.com"),
         r("dmarc", "fail", header_from="example.com")),
    ),
    Sample(
        "gmail-dkim-neutral",
        "mx.google.com;\r\n"
        "       dkim=neutral (body hash did not verify) header.i=@example.com header.s=s1"
        " header.b=aBcD;\r\n"
        "       spf=pass (google.com: best guess record for domain of alice@example.com"
        " designates 192.0.2.3 as permitted sender) smtp.mailfrom=alice@example.com",
        "mx.google.com",
        (r("dkim", "neutral", header_i="@example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com")),
    ),
    # --- Microsoft 365 / Exchange Online: no authserv-id at all -----------------------
    Sample(
        "m365-pass",
        "spf=pass (sender IP is 40.107.22.51)\r\n"
        " smtp.mailfrom=example.com; dkim=pass (signature was verified)\r\n"
        " header.d=example.com;dmarc=pass action=none\r\n"
        " header.from=example.com;compauth=pass reason=100",
        None,
        (r("spf", "pass", smtp_mailfrom="example.com"),
         r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "m365-fail",
        "spf=softfail (sender IP is 203.0.113.9)\r\n"
        " smtp.mailfrom=example.com; dkim=none (message not signed)\r\n"
        " header.d=none;dmarc=fail action=quarantine\r\n"
        " header.from=example.com;compauth=fail reason=000",
        None,
        (r("spf", "softfail", smtp_mailfrom="example.com"),
         r("dkim", "none", header_d="none"),
         r("dmarc", "fail", header_from="example.com")),
    ),
    # --- Postfix with OpenDKIM, OpenDMARC, policyd-spf: one field each -----------------
    Sample(
        "opendkim",
        "mail.example.org;\r\n"
        "\tdkim=pass (2048-bit key; unprotected) header.d=example.com header.i=@example.com"
        " header.a=rsa-sha256 header.s=default header.b=Xy/Z+1ab;\r\n"
        "\tdkim-atps=neutral",
        "mail.example.org",
        (r("dkim", "pass", header_d="example.com", header_i="@example.com"),),
    ),
    Sample(
        "opendkim-fail-reason",
        "mail.example.org;\r\n"
        '\tdkim=fail reason="signature verification failed" (1024-bit key; secure)'
        ' header.d=example.com header.i=@example.com header.b="aBc/1+2"',
        "mail.example.org",
        (r("dkim", "fail", header_d="example.com", header_i="@example.com"),),
    ),
    Sample(
        "opendmarc",
        "mail.example.org; dmarc=pass (p=quarantine dis=none) header.from=example.com",
        "mail.example.org",
        (r("dmarc", "pass", header_from="example.com"),),
    ),
    Sample(
        "opendmarc-spf",
        "mail.example.org; spf=pass smtp.mailfrom=example.com",
        "mail.example.org",
        (r("spf", "pass", smtp_mailfrom="example.com"),),
    ),
    Sample(
        "openarc",
        "mail.example.org; arc=none smtp.remote-ip=203.0.113.5",
        "mail.example.org",
        (),
    ),
    # --- Rspamd: one combined field -----------------------------------------------------
    Sample(
        "rspamd",
        "mx.example.org;\r\n"
        "\tdkim=pass header.d=example.com header.s=dkim header.b=AbCdEfGh;\r\n"
        "\tdmarc=pass (policy=reject) header.from=example.com;\r\n"
        "\tspf=pass (mx.example.org: domain of alice@example.com designates 192.0.2.10 as"
        " permitted sender) smtp.mailfrom=alice@example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com")),
    ),
    Sample(
        "rspamd-unsigned",
        "mx.example.org;\r\n\tdkim=none;\r\n\tdmarc=none;\r\n"
        "\tspf=pass (mx.example.org: domain of bounce@example.net designates 192.0.2.11 as"
        " permitted sender) smtp.mailfrom=bounce@example.net",
        "mx.example.org",
        (r("dkim", "none"), r("dmarc", "none"),
         r("spf", "pass", smtp_mailfrom="bounce@example.net")),
    ),
    Sample(
        "rspamd-arc-reason",
        "mx.example.org;\r\n"
        "\tdkim=pass header.d=example.com header.s=s1 header.b=QwErTy12;\r\n"
        '\tarc=pass ("example.com:s=arc-2022:i=1");\r\n'
        '\tdmarc=pass reason="SPF not aligned (relaxed)" header.from=example.com'
        " (policy=none)",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    # --- Gateways: Proofpoint, Mimecast, Cloudflare, Fastmail, Yahoo, Exim, SES ----------
    Sample(
        "proofpoint",
        "ppops.net;\r\n"
        "\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
        "\tdkim=pass header.d=example.com header.s=selector1;\r\n"
        "\tdmarc=pass header.from=example.com",
        "ppops.net",
        (r("spf", "pass", smtp_mailfrom="alice@example.com"),
         r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "mimecast",
        "relay.mimecast.com;\r\n"
        "\tdkim=pass header.d=example.com header.s=selector1 header.b=AbCd1234;\r\n"
        "\tdmarc=pass (policy=none) header.from=example.com;\r\n"
        "\tspf=pass (relay.mimecast.com: domain of alice@example.com designates 192.0.2.20"
        " as permitted sender) smtp.mailfrom=alice@example.com",
        "relay.mimecast.com",
        (r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com")),
    ),
    Sample(
        "mimecast-auth",
        "relay.mimecast.com;\r\n\tauth=pass smtp.auth=alice@example.com;\r\n"
        "\tdkim=none;\r\n\tdmarc=none;\r\n\tspf=none",
        "relay.mimecast.com",
        (r("dkim", "none"), r("dmarc", "none"), r("spf", "none")),
    ),
    Sample(
        "cloudflare",
        "mx.cloudflare.net; dkim=pass header.d=example.com header.s=s1 header.b=AbC;"
        " dmarc=pass header.from=example.com policy.dmarc=reject; spf=pass"
        " (mx.cloudflare.net: domain of alice@example.com designates 192.0.2.60 as permitted"
        " sender) smtp.mailfrom=alice@example.com; arc=none smtp.remote-ip=192.0.2.60",
        "mx.cloudflare.net",
        (r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com")),
    ),
    Sample(
        "fastmail",
        "mx5.messagingengine.com;\r\n"
        "    dkim=pass (2048-bit rsa key sha256) header.d=example.com header.i=@example.com"
        " header.b=AbCd header.a=rsa-sha256 header.s=fm1 x-bits=2048;\r\n"
        "    dmarc=pass policy.published-domain-policy=none"
        " policy.applied-disposition=none policy.evaluated-disposition=none"
        " (p=none,d=none,d.eval=none) policy.policy-from=p header.from=example.com;\r\n"
        "    iprev=pass smtp.remote-ip=192.0.2.30 (mail.example.com);\r\n"
        "    spf=pass smtp.mailfrom=alice@example.com smtp.helo=mail.example.com",
        "mx5.messagingengine.com",
        (r("dkim", "pass", header_d="example.com", header_i="@example.com"),
         r("dmarc", "pass", header_from="example.com"),
         r("spf", "pass", smtp_mailfrom="alice@example.com")),
    ),
    Sample(
        "yahoo-trailing-semicolon",
        "atlas-production.v2-mail-prod1-gq1.omega.yahoo.com;\r\n"
        " dkim=pass header.i=example.com header.s=s2048;\r\n"
        " spf=pass smtp.mailfrom=example.com;\r\n"
        " dmarc=pass(p=REJECT) header.from=example.com;",
        "atlas-production.v2-mail-prod1-gq1.omega.yahoo.com",
        (r("dkim", "pass", header_i="example.com"),
         r("spf", "pass", smtp_mailfrom="example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "exim",
        "mx.example.org;\r\n"
        "\tiprev=pass (mail.example.com) smtp.remote-ip=192.0.2.40;\r\n"
        "\tspf=pass smtp.mailfrom=example.com;\r\n"
        "\tdkim=pass header.d=example.com header.s=s1 header.a=rsa-sha256;\r\n"
        "\tdmarc=pass header.from=example.com;\r\n"
        "\tarc=none",
        "mx.example.org",
        (r("spf", "pass", smtp_mailfrom="example.com"),
         r("dkim", "pass", header_d="example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    Sample(
        "amazon-ses-loose-semicolons",
        "amazonses.com; spf=pass (spfCheck: domain of example.com designates 192.0.2.50 as"
        " permitted sender) client-ip=192.0.2.50; envelope-from=alice@example.com;"
        " helo=mail.example.com; dkim=pass header.i=@example.com; dmarc=pass"
        " header.from=example.com;",
        "amazonses.com",
        (r("spf", "pass"), r("dkim", "pass", header_i="@example.com"),
         r("dmarc", "pass", header_from="example.com")),
    ),
    # --- Versions, case, spacing, comments, quoting ---------------------------------------
    Sample(
        "versioned",
        "mx.example.org 1; dkim=pass header.d=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "versioned-with-comments",
        "mx.example.org (amavisd-new) 1 (v1); spf=pass smtp.mailfrom=example.com",
        "mx.example.org",
        (r("spf", "pass", smtp_mailfrom="example.com"),),
    ),
    Sample(
        "unknown-version",  # only version 1 exists: the results are not ours to read
        "mx.example.org 2; dkim=pass header.d=example.com",
        "mx.example.org",
        (),
    ),
    Sample(
        "odd-spacing",
        "mx.example.org ;dkim = pass header . d = example.com ;  spf=pass"
        " smtp . mailfrom = example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),
         r("spf", "pass", smtp_mailfrom="example.com")),
    ),
    Sample(
        "upper-case",
        "MX.Example.ORG; DKIM=PASS Header.D=Example.COM",
        "mx.example.org",
        (r("dkim", "pass", header_d="Example.COM"),),
    ),
    Sample(
        "comment-before-id",
        "(spam gateway) mx.example.org; dkim=pass header.d=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "nested-comments",
        "mx.example.org (a (nested (deep)) comment); dkim=pass (good (really) signature)"
        " header.d=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "escaped-paren-in-comment",
        "mx.example.org; dkim=pass (sig \\) ok) header.d=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "comments-without-spaces",
        "mx.example.org(c);dkim=pass(c)header.d=example.com(c);spf=fail(c)"
        "smtp.mailfrom=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),
         r("spf", "fail", smtp_mailfrom="example.com")),
    ),
    Sample(
        "quoted-authserv-id",  # RFC 8601 2.2: authserv-id = value = token / quoted-string
        '"mx.example.org"; dkim=pass header.d=example.com',
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "quoted-local-part",
        'mx.example.org; spf=pass smtp.mailfrom="john doe"@example.com',
        "mx.example.org",
        (r("spf", "pass", smtp_mailfrom='"john doe"@example.com'),),
    ),
    Sample(
        "method-version",
        "mx.example.org; dkim/1=pass header.d=example.com",
        "mx.example.org",
        (r("dkim", "pass", header_d="example.com"),),
    ),
    Sample(
        "two-signatures",
        "mx.example.org; dkim=fail header.d=example.net; dkim=pass header.d=example.com",
        "mx.example.org",
        (r("dkim", "fail", header_d="example.net"), r("dkim", "pass", header_d="example.com")),
    ),
    Sample("none", "mx.example.org; none", "mx.example.org", ()),
    Sample("none-commented", "mx.example.org (no checks done); none", "mx.example.org", ()),
    # --- Malformed: only the authserv-id must be found, nothing may raise -------------
    Sample(
        "unterminated-comment",
        "mx.example.org; dkim=pass header.d=example.com (unterminated",
        "mx.example.org",
        None,
    ),
    Sample(
        "unterminated-quote",
        'mx.example.org; dkim=pass header.d="example.com',
        "mx.example.org",
        None,
    ),
    Sample("empty-results", "mx.example.org;", "mx.example.org", None),
    Sample("only-id", "mx.example.org", "mx.example.org", None),
    Sample(
        "missing-semicolon",
        "mx.example.org dkim=pass header.d=example.com",
        "mx.example.org",
        None,
    ),
    Sample("junk-specials", "mx.example.org; ==;;; =pass header.d=; spf=", "mx.example.org",
           None),
    Sample("trailing-backslash", "mx.example.org; dkim=pass header.d=example.com\\",
           "mx.example.org", None),
)
