"""`[metrics]`: off by default; `listen` is host:port (IPv6 in brackets), checked at load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpdesk.errors import ConfigError
from helpdesk.settings import Settings, load_settings


def load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "helpdesk.toml"
    path.write_text(text)
    return load_settings(path, {})


def test_metrics_are_off_unless_listen_is_set(tmp_path: Path) -> None:
    """No [metrics] section: nothing listens; the store-wide figures cache 5 s by default."""
    settings = load(tmp_path, "")
    assert settings.metrics.listen is None
    assert settings.metrics.address is None
    assert settings.metrics.store_cache_seconds == 5.0


@pytest.mark.parametrize(("listen", "address"), [
    ("127.0.0.1:9308", ("127.0.0.1", 9308)),
    ("0.0.0.0:9308", ("0.0.0.0", 9308)),
    ("[::1]:9308", ("::1", 9308)),
    ("metrics.internal:80", ("metrics.internal", 80)),
])
def test_listen_takes_host_and_port(tmp_path: Path, listen: str, address: tuple[str, int]) -> None:
    """IPv4, a host name, or IPv6 in brackets, then the port."""
    settings = load(tmp_path, f'[metrics]\nlisten = "{listen}"\nstore_cache_seconds = 1\n')
    assert settings.metrics.address == address
    assert settings.metrics.store_cache_seconds == 1


@pytest.mark.parametrize("listen", ["9308", "localhost", ":9308", "::1:9308", "host:0",
                                    "host:65536", "host:http"])
def test_a_bad_listen_address_is_reported_with_its_key(tmp_path: Path, listen: str) -> None:
    """Anything but host:port is a configuration error naming metrics.listen."""
    with pytest.raises(ConfigError) as error:
        load(tmp_path, f'[metrics]\nlisten = "{listen}"\n')
    assert "metrics.listen: must" in str(error.value)


def test_an_unknown_metrics_key_is_reported(tmp_path: Path) -> None:
    """A typo in [metrics] names the allowed keys."""
    with pytest.raises(ConfigError) as error:
        load(tmp_path, '[metrics]\nlisten_on = "127.0.0.1:9308"\n')
    assert "metrics.listen_on: unknown key; allowed keys: listen, store_cache_seconds" in str(
        error.value)


def test_the_example_metrics_section_is_valid_once_uncommented(tmp_path: Path) -> None:
    """config.example.toml documents [metrics] commented out; uncommented it loads."""
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    text = example.read_text(encoding="utf-8")
    start, end = text.index("#[metrics]"), text.index("\n[smtp]")
    # The settings, not the prose: those lines start with "#[" or "#key".
    uncommented = text[:start] + re.sub(r"(?m)^#(?=[\[a-z])", "", text[start:end]) + text[end:]
    settings = load(tmp_path, uncommented)
    assert settings.metrics.address == ("127.0.0.1", 9308)
    assert settings.metrics.store_cache_seconds == 5
