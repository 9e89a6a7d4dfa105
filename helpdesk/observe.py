"""What the intake and the sender report as mail flows, to whoever watches (issue 11).

The committer and the sender call an `Observer` at the moments that matter:
a mail committed, a relay's answer about a recipient. The base class does
nothing, so nothing below the application layer knows who listens or imports
a metrics library; the daemon hands in its Prometheus implementation
(`helpdesk.daemon.metrics`) when `[metrics]` is configured.

Every method is called from a worker thread (the committer's, the sender's
event loop) and must be cheap and must not raise.
"""

from __future__ import annotations

from helpdesk.values import IngestOutcome, Origin

__all__ = ["NULL_OBSERVER", "Observer", "smtp_result"]


class Observer:
    """Callbacks with no-op defaults; subclass and override what you want to know."""

    def ingested(self, origin: Origin, outcome: IngestOutcome, seconds: float) -> None:
        """One mail's transaction committed; `seconds` is what it cost (the time its
        parsing took plus its share of the group commit, as `message.ingested` logs it)."""

    def send_attempted(self, code: int | None, recipients: int = 1) -> None:
        """The relay answered `code` about `recipients` recipients of one mail; None when
        there was no answer (the connection failed, dropped or timed out)."""


NULL_OBSERVER = Observer()
"""The observer when nobody watches."""


def smtp_result(code: int | None) -> str:
    """The class of a relay's answer: ``2xx``, ``4xx``, ``5xx`` or ``connection_error``.

    RFC 5321 §4.2.1: the first digit is what matters to a client. Anything
    else (no answer, or a code outside 200-599) counts as a connection error.
    """
    if code is None or not 200 <= code <= 599 or 300 <= code < 400:
        return "connection_error"
    return f"{code // 100}xx"
