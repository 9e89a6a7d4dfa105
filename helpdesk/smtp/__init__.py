"""The SMTP edge: the conversation with our relay, and the sender that works the outbox.

* `conversation`: one reused connection; the relay's answer per recipient,
  or a `RelayProblem` when the relay itself fails.
* `sender`: claims, deadlines, claim renewal, stop, relay backoff, wake-ups.
* `recorder`: results kept until committed; the sender's view of the store.
* `watch`: LISTEN/NOTIFY on PostgreSQL, `PRAGMA data_version` on SQLite.
"""

from helpdesk.smtp.conversation import Envelope, Problem, Relay, RelayProblem
from helpdesk.smtp.recorder import Backoff
from helpdesk.smtp.sender import STOP_GRACE, Sender

__all__ = ["STOP_GRACE", "Backoff", "Envelope", "Problem", "Relay", "RelayProblem", "Sender"]
