"""The key that signs our Message-IDs: configured, or generated once and kept in the store.

A help desk that nobody configured still signs its mail: the first process
that needs a key generates one and stores it, and every later process (and
every other daemon on the same PostgreSQL) reads the same key.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from helpdesk.store import schema
from helpdesk.store.models import StoreValue
from helpdesk.store.upsert import dialect_insert

KEY_NAME = "message_id_signing_key"


def signing_key(session: Session, configured: str | None = None) -> bytes:
    """The configured secret, else the stored one (generated on first use)."""
    if configured:
        return configured.encode("utf-8")
    conn = session.connection()
    insert = dialect_insert(conn.dialect.name)
    # Two processes starting at once both try; ON CONFLICT keeps the first key.
    conn.execute(
        insert(schema.store_values)
        .values(key=KEY_NAME, value=secrets.token_hex(32))
        .on_conflict_do_nothing()
    )
    value = conn.execute(select(StoreValue.value).where(StoreValue.key == KEY_NAME)).scalar_one()
    return bytes.fromhex(value)
