"""Fault scenarios: the sender against relays that refuse, stall, greylist and fail AUTH."""
