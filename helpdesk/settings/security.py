"""What a configuration leaves open to someone who can only send mail.

`security_warnings(settings)` is shown by the daemon once at start, and by
`helpdesk config check` and `helpdesk status`. Each warning starts with the
key it is about, like the configuration errors do.
"""

from __future__ import annotations

from helpdesk.settings.sections import Settings

__all__ = ["security_warnings"]


def security_warnings(settings: Settings) -> list[str]:
    """The security warnings for `settings`, each a line starting with its key; [] when none."""
    security = settings.security
    if security.trusted_authserv_id:
        if security.trust_from_header:
            return [
                "security.trust_from_header: ignored, because security.trusted_authserv_id "
                "is set (agents' mail needs your MX's Authentication-Results)"
            ]
        return []
    if security.trust_from_header:
        return [
            "security.trust_from_header: the From address alone grants agent powers: "
            "anyone who writes an agent's address can run #commands, add notes and have "
            "mail relayed to customers from the support address; set "
            "security.trusted_authserv_id to your MX's authserv-id instead"
        ]
    return [
        "security.trusted_authserv_id: not set, so agent powers by mail are off: agents' "
        "mail is stored as customer mail (no #commands, notes or relay); set it to your "
        "MX's authserv-id (or security.trust_from_header = true to trust From addresses)"
    ]
