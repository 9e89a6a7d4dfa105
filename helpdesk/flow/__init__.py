"""Mail into tickets: ingest, agents' mail, relay, bounces, quarantine, mailboxes."""
