"""Mail out: the outbox, the sender's claims, threading headers, wake-ups, signing."""
