"""The sections of the configuration file, one frozen model each, and `Settings`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from helpdesk.configfile import MAX_MESSAGE_BYTES
from helpdesk.names import without_subaddress
from helpdesk.settings.fields import (
    _EMAIL,
    DEFAULT_DATABASE_URL,
    DEFAULT_NAME,
    DEFAULT_SUPPORT_ADDRESS,
    IMAP_PORTS,
    SMTP_PORTS,
    AfterProcessing,
    BatchSize,
    ClosedTicketPolicy,
    DatabaseUrl,
    Domain,
    Email,
    ExistingFile,
    ForeignTagPolicy,
    NonEmptyStr,
    Password,
    Port,
    ResolvedPath,
    Seconds,
    TagPrefix,
    Tls,
    TlsMode,
    _choice,
    _derive_port,
    _not_negative,
    _not_negative_float,
    _positive,
    _redact_url,
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HelpdeskSettings(_Section):
    """``[helpdesk]``: who we are in the mail we send and receive."""

    name: NonEmptyStr = DEFAULT_NAME
    # From and Reply-To of everything we send.
    support_address: Email = DEFAULT_SUPPORT_ADDRESS
    # Every address that reaches us; always contains support_address (first).
    own_addresses: tuple[Email, ...] = Field(default=(), validate_default=True)
    # Right-hand side of our Message-IDs; defaults to support_address's domain.
    domain: Domain = "localhost"
    # Subject tags look like "[#1042]".
    tag_prefix: TagPrefix = "#"
    # Mail to this address (or whose first line is "#note") from an agent is an
    # internal note; default: support_address with "+note" (support+note@...).
    note_address: Email | None = None
    # Key that signs our Message-IDs (from secret, secret_file or HELPDESK_SECRET).
    # Unset: a random key is generated once and kept in the database.
    secret: Password | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_domain(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "domain" in data:
            return data
        support = data.get("support_address", DEFAULT_SUPPORT_ADDRESS)
        valid = isinstance(support, str) and _EMAIL.fullmatch(support.strip())
        # An invalid support_address is reported on its own key; fall back quietly.
        domain = support.strip().rpartition("@")[2] if valid else "localhost"
        return {**data, "domain": domain}

    @field_validator("own_addresses")
    @classmethod
    def _include_support(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        support = info.data.get("support_address")
        everything = (support, *value) if isinstance(support, str) else value
        return tuple(dict.fromkeys(everything))  # de-duplicated, order kept

    @property
    def notes_to(self) -> str:
        """The address whose mail from agents is an internal note."""
        if self.note_address:
            return self.note_address
        local, _, domain = self.support_address.partition("@")
        return f"{local}+note@{domain}"

    def is_own_address(self, address: str) -> bool:
        """True for our addresses and their ``+tag`` sub-addresses, in any case."""
        wanted = address.strip().lower()
        return wanted in self.own_addresses or without_subaddress(wanted) in self.own_addresses


class DatabaseSettings(_Section):
    """``[database]``; ``HELPDESK_DATABASE_URL`` overrides the file."""

    # SQLAlchemy URL; a relative SQLite path is resolved against base_dir.
    url: DatabaseUrl = Field(default=DEFAULT_DATABASE_URL, validate_default=True)
    # From password_file or HELPDESK_DATABASE_PASSWORD (or in the URL itself);
    # given to the driver apart from the URL, so the URL can be shown and logged.
    password: Password | None = None

    @property
    def password_value(self) -> str | None:
        """The password in clear, for the driver only."""
        return self.password.get_secret_value() if self.password is not None else None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A PostgreSQL URL may carry a password; keep it out of logs and tracebacks.
        for name, value in super().__repr_args__():
            yield name, _redact_url(value) if name == "url" else value


class MailboxSettings(_Section):
    """One ``[[mailbox]]``: an IMAP folder that ingest polls."""

    name: NonEmptyStr
    host: NonEmptyStr
    # Defaults to 993 with ssl, 143 otherwise.
    port: Port = 993
    tls: TlsMode = Tls.SSL
    ca_file: ExistingFile | None = None
    username: NonEmptyStr
    # From password, password_file or HELPDESK_MAILBOX_<NAME>_PASSWORD.
    password: Password
    folder: NonEmptyStr = "INBOX"
    after: Annotated[AfterProcessing, _choice(AfterProcessing)] = AfterProcessing.MOVE
    # Only used when after = "move".
    processed_folder: NonEmptyStr = "Processed"
    failed_folder: NonEmptyStr = "Failed"
    team: NonEmptyStr | None = None
    poll_interval: Seconds = 60.0
    batch_size: BatchSize = 100
    # Bodies are fetched in batches of at most batch_size messages and this many bytes.
    fetch_batch_bytes: Annotated[StrictInt, AfterValidator(_positive)] = 20 * 1024 * 1024
    # A message the server cannot return (FETCH answers NO) is tried this many
    # times, counted across restarts, then quarantined and moved to failed_folder.
    fetch_attempts: Annotated[StrictInt, AfterValidator(_positive)] = 3

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        return _derive_port(data, IMAP_PORTS, Tls.SSL)


class MaildirSettings(_Section):
    """One ``[[maildir]]``: a Maildir an MTA delivers to; new/ moves to cur/ after commit."""

    name: NonEmptyStr
    path: ResolvedPath
    team: NonEmptyStr | None = None
    poll_interval: Seconds = 5.0


class LmtpSettings(_Section):
    """``[lmtp]``: listen for LMTP deliveries from the local MTA (only when the section exists)."""

    host: NonEmptyStr = "127.0.0.1"
    # 24 is LMTP's registered port, but it needs root; 2424 does not.
    port: Port = 2424
    # A UNIX socket to listen on instead of host:port (Postfix: lmtp:unix:PATH);
    # `helpdesk ingest` of a piped mail hands it to the daemon through it.
    socket: ResolvedPath | None = None


class IntakeSettings(_Section):
    """``[intake]``: how mail from any source is taken in, by `helpdesk run` and `ingest`."""

    # A larger message is refused (LMTP 552, `ingest` exit 1) or, when it is
    # already in a mailbox, quarantined with its headers and moved to failed_folder.
    max_message_bytes: Annotated[StrictInt, AfterValidator(_positive)] = MAX_MESSAGE_BYTES
    # A message whose parsing and classification take longer than this is
    # stopped (its worker process killed) and quarantined.
    message_time_limit: Seconds = 60.0
    # Worker processes for parsing; 0 means one per CPU core.
    workers: Annotated[StrictInt, AfterValidator(_not_negative)] = 0
    # Group commit: at most this many messages per transaction...
    batch_max: Annotated[StrictInt, AfterValidator(_positive)] = 200
    # ...and at most this long to wait for more once one is there (0: commit at once;
    # whatever arrives meanwhile goes into the next commit).
    batch_ms: Annotated[StrictFloat, AfterValidator(_not_negative_float)] = 0.0


class DaemonSettings(_Section):
    """``[daemon]``: how `helpdesk run` behaves."""

    # A mailbox is worked by the holder of a lease of this length, renewed while working.
    lease_seconds: Seconds = 60.0
    # How often the outbox is checked for due mail when idle.
    send_interval: Seconds = 2.0


def _listen(value: str) -> str:
    host, port = split_listen(value)
    if not host:
        raise ValueError(f'must be "host:port", like "127.0.0.1:9308" or "[::1]:9308" '
                         f"(got {value!r})")
    if not 1 <= port <= 65535:
        raise ValueError(f"must end in a port number from 1 to 65535 (got {value!r})")
    return value


def split_listen(value: str) -> tuple[str, int]:
    """("host", port) of a ``host:port`` or ``[v6]:port`` listen address; ("", 0) if malformed."""
    host, colon, port = value.strip().rpartition(":")
    if not colon or not port.isdigit():
        return "", 0
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return "", 0  # an IPv6 address needs its brackets, or the port is ambiguous
    return host, int(port)


class MetricsSettings(_Section):
    """``[metrics]``: the daemon's Prometheus endpoint (/metrics, /healthz); off unless set."""

    # host:port to serve /metrics and /healthz on, e.g. "127.0.0.1:9308"; unset: off.
    listen: Annotated[str, AfterValidator(_listen)] | None = None
    # Store-wide figures (outbox, open tickets, quarantine) are read from the
    # database at most this often, however many scrapers ask.
    store_cache_seconds: Seconds = 5.0

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when metrics are off."""
        return split_listen(self.listen) if self.listen else None


class SmtpSettings(_Section):
    """``[smtp]``: where outgoing mail is handed over.

    The default is a local MTA on localhost:25 without TLS or login, which is
    what a stock Postfix/Exim on the help desk host offers.
    """

    host: NonEmptyStr = "localhost"
    # Defaults to 465 with ssl, 587 with starttls, 25 with none.
    port: Port = 25
    tls: TlsMode = Tls.NONE
    ca_file: ExistingFile | None = None
    username: NonEmptyStr | None = None
    # From password, password_file or HELPDESK_SMTP_PASSWORD.
    password: Password | None = None
    timeout: Seconds = 30.0

    @model_validator(mode="before")
    @classmethod
    def _default_port(cls, data: Any) -> Any:
        return _derive_port(data, SMTP_PORTS, Tls.NONE)


class AutoReplySettings(_Section):
    """``[auto_reply]``: how many automatic replies one sender may get."""

    # At most this many automatic replies per sender address within the window.
    max_per_sender: Annotated[StrictInt, AfterValidator(_positive)] = 10
    window_hours: Seconds = 24.0


class BounceSettings(_Section):
    """``[bounces]``: what a permanent delivery failure does."""

    # No automatic mail to an address that bounced permanently, for this many days.
    suppress_days: Seconds = 7.0


NULL_SENDER = "<>"


def _envelope_sender(value: str) -> str:
    """``"<>"`` (the null sender) or an e-mail address, lower-cased."""
    text = value.strip()
    if text == NULL_SENDER:
        return text
    address = text.lower()
    if not _EMAIL.fullmatch(address):
        raise ValueError(f'must be "<>" or an email address like bounces@example.org '
                         f"(got {value!r})")
    return address


EnvelopeSender = Annotated[str, AfterValidator(_envelope_sender)]


class OutboxSettings(_Section):
    """``[outbox]``: retries of outgoing mail, and what automatic mail says about itself."""

    # A mail refused with 5xx this many times is marked failed.
    max_permanent_failures: Annotated[StrictInt, AfterValidator(_positive)] = 3
    # Temporary failures (4xx, connection) are retried with capped exponential backoff...
    retry_max_delay: Seconds = 3600.0
    # ...until the mail is this old, then it is marked failed.
    give_up_after_hours: Seconds = 120.0
    # Envelope sender (MAIL FROM) of automatic mail to requesters (acknowledgements,
    # notices): "<>", the null sender, so that bounces and autoresponders never
    # answer it (RFC 3834 section 3.3), or an address that only takes bounces.
    bounce_address: EnvelopeSender = NULL_SENDER
    # Envelope sender of automatic mail to our own staff (team forwards,
    # notifications, escalations, answers to #commands); default: bounce_address.
    staff_bounce_address: EnvelopeSender | None = None
    # "Precedence: bulk" on automatic mail (vacation programs look for it).
    precedence_bulk: StrictBool = True

    @property
    def requester_envelope_sender(self) -> str:
        """MAIL FROM of automatic mail to requesters; "" is the null sender."""
        return "" if self.bounce_address == NULL_SENDER else self.bounce_address

    @property
    def staff_envelope_sender(self) -> str:
        """MAIL FROM of automatic mail to staff; "" is the null sender."""
        chosen = self.staff_bounce_address or self.bounce_address
        return "" if chosen == NULL_SENDER else chosen


class ThreadingPolicy(_Section):
    """``[threading]``: the two judgement calls when matching mail to tickets."""

    foreign_tag: Annotated[ForeignTagPolicy, _choice(ForeignTagPolicy)] = (
        ForeignTagPolicy.NEW_TICKET
    )
    closed_ticket: Annotated[ClosedTicketPolicy, _choice(ClosedTicketPolicy)] = (
        ClosedTicketPolicy.REOPEN
    )


class RulesSettings(_Section):
    """``[rules]``: the directory of rule files."""

    dir: ResolvedPath = Field(default=Path("rules"), validate_default=True)


class TemplatesSettings(_Section):
    """``[templates]``: the directory of mail templates."""

    dir: ResolvedPath = Field(default=Path("templates"), validate_default=True)


class TeamSettings(_Section):
    """One ``[[team]]``."""

    name: NonEmptyStr
    address: Email | None = None
    # Escalations (time-driven rules) go here; default: the team address.
    lead: Email | None = None


def _authres_fields(value: int) -> int:
    if not 1 <= value <= MAX_AUTHRES_FIELDS:
        raise ValueError(f"must be between 1 and {MAX_AUTHRES_FIELDS} (got {value})")
    return value


# More Authentication-Results fields than this from one's own servers is a
# misreading of a mail (counting a sender's fields too), not a setup.
MAX_AUTHRES_FIELDS = 10


class SecuritySettings(_Section):
    """``[security]``: who may act as an agent by e-mail (see helpdesk/mail/trust.py).

    Secure by default: with neither key set, mail from an agent's address gets
    no agent powers (no commands, notes or relay); it is a customer's mail.
    """

    # Agent powers by e-mail need an Authentication-Results field from this
    # authserv-id (our MX) with DKIM, SPF or DMARC pass aligned to the From domain.
    trusted_authserv_id: NonEmptyStr | None = None
    # How many Authentication-Results fields naming trusted_authserv_id our own
    # servers add to each mail (RFC 8601 section 5); a mail with more carries a
    # forged one and is untrusted.
    trusted_authres_fields: Annotated[StrictInt, AfterValidator(_authres_fields)] = 1
    # Trust the From address alone (when trusted_authserv_id is unset): anyone who
    # writes an agent's address gets that agent's powers. Only set it knowingly.
    trust_from_header: StrictBool = False


class AgentSettings(_Section):
    """One ``[[agent]]``: a person whose mail counts as an agent reply."""

    name: NonEmptyStr
    addresses: tuple[Email, ...] = Field(min_length=1)
    teams: tuple[NonEmptyStr, ...] = ()

    @field_validator("addresses", "teams")
    @classmethod
    def _deduplicate(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))


class Settings(_Section):
    """Everything helpdesk is configured with; build it with `load_settings`."""

    helpdesk: HelpdeskSettings = Field(default_factory=HelpdeskSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    mailboxes: tuple[MailboxSettings, ...] = ()
    maildirs: tuple[MaildirSettings, ...] = ()
    lmtp: LmtpSettings | None = None
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    threading: ThreadingPolicy = Field(default_factory=ThreadingPolicy)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    auto_reply: AutoReplySettings = Field(default_factory=AutoReplySettings)
    bounces: BounceSettings = Field(default_factory=BounceSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    templates: TemplatesSettings = Field(default_factory=TemplatesSettings)
    teams: tuple[TeamSettings, ...] = ()
    agents: tuple[AgentSettings, ...] = ()
    # The file these settings came from; None for built-in defaults.
    source: Path | None = None
    # What relative paths were resolved against: the file's directory, else the cwd.
    base_dir: Path = Field(default_factory=Path.cwd)

    def agent_by_address(self, address: str) -> AgentSettings | None:
        """The agent who owns `address` (case-insensitive), if any."""
        wanted = address.strip().lower()
        return next((agent for agent in self.agents if wanted in agent.addresses), None)

    def is_own_address(self, address: str) -> bool:
        """True if mail from `address` is mail from the help desk itself."""
        return self.helpdesk.is_own_address(address)
