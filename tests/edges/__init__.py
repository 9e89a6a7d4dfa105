"""Edge tests: sources against real servers (Dovecot, aiosmtpd) and a real store."""
