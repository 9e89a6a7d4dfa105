"""Settings: one TOML file, validated once into frozen, typed objects.

`load_settings` finds the file, reads it, checks every key and returns a
`Settings`; anything wrong becomes a single `ConfigError` that lists every
problem with the key as the admin wrote it (``mailbox "it-support".tls``), so
one edit-and-retry cycle fixes them all.

The environment is a parameter, never ``os.environ``: the CLI passes the real
one, tests pass a dict. Relative paths in the file are resolved against the
file's directory, so the daemon behaves the same from any working directory.

Without a file the built-in defaults describe a single-host setup: SQLite next
to the working directory and a local MTA on localhost:25.
"""

from helpdesk.configfile import CONFIG_ENV, CONFIG_FILENAME
from helpdesk.settings.fields import (
    DATABASE_PASSWORD_ENV,
    DATABASE_URL_ENV,
    SECRET_ENV,
    SMTP_PASSWORD_ENV,
    AfterProcessing,
    ClosedTicketPolicy,
    ForeignTagPolicy,
    Tls,
    mailbox_password_env,
)
from helpdesk.settings.loader import find_config, load_settings
from helpdesk.settings.sections import (
    AgentSettings,
    AutoReplySettings,
    BounceSettings,
    DaemonSettings,
    DatabaseSettings,
    HelpdeskSettings,
    IntakeSettings,
    LmtpSettings,
    MailboxSettings,
    MaildirSettings,
    MetricsSettings,
    OutboxSettings,
    RulesSettings,
    SecuritySettings,
    Settings,
    SmtpSettings,
    TeamSettings,
    TemplatesSettings,
    ThreadingPolicy,
)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILENAME",
    "DATABASE_PASSWORD_ENV",
    "DATABASE_URL_ENV",
    "SECRET_ENV",
    "SMTP_PASSWORD_ENV",
    "AfterProcessing",
    "AgentSettings",
    "AutoReplySettings",
    "BounceSettings",
    "ClosedTicketPolicy",
    "DaemonSettings",
    "DatabaseSettings",
    "ForeignTagPolicy",
    "HelpdeskSettings",
    "IntakeSettings",
    "LmtpSettings",
    "MailboxSettings",
    "MaildirSettings",
    "MetricsSettings",
    "OutboxSettings",
    "RulesSettings",
    "SecuritySettings",
    "Settings",
    "SmtpSettings",
    "TeamSettings",
    "TemplatesSettings",
    "ThreadingPolicy",
    "Tls",
    "find_config",
    "load_settings",
    "mailbox_password_env",
]
