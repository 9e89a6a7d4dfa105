"""Ticket work: use cases, rule actions, notices, notifications, timers, stats, staff."""
