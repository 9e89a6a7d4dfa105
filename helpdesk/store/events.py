"""The INSERT of `events` rows (a ticket's history) that every writer shares, run directly."""

from __future__ import annotations

from sqlalchemy import insert

from helpdesk.store import schema
from helpdesk.store.direct import Direct

__all__ = ["INSERT_EVENT"]

INSERT_EVENT = Direct(insert(schema.events))
