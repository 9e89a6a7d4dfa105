"""Real servers for tests, on free loopback ports: skipped locally when missing, failed in CI."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_server(reason: str) -> None:
    """Skip the test on a developer machine; under CI=true a missing server is a failure."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs this server: {reason}", pytrace=False)
    pytest.skip(reason)
