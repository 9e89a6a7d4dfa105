"""Hostile input: mail built to cost time or memory must cost little of either (issue 12)."""
