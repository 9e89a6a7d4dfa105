"""[security]: secure by default, and the warnings `config check`, `status` and the daemon show."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk.errors import ConfigError
from helpdesk.settings import SecuritySettings, Settings, load_settings
from helpdesk.settings.security import security_warnings


def settings_with(tmp_path: Path, security: str) -> Settings:
    """Settings loaded from a file whose [security] table is `security`."""
    config = tmp_path / "helpdesk.toml"
    config.write_text(f"[security]\n{security}\n", encoding="utf-8")
    return load_settings(config, {}, cwd=tmp_path)


def test_defaults_grant_no_agent_powers() -> None:
    """Shipped defaults: no authserv-id, From not trusted, one field from our MX."""
    assert SecuritySettings() == SecuritySettings(
        trusted_authserv_id=None, trusted_authres_fields=1, trust_from_header=False
    )


def test_default_warns_that_agent_powers_are_off(tmp_path: Path) -> None:
    """Without either key the warning says agent mail is customer mail and how to change it."""
    (warning,) = security_warnings(settings_with(tmp_path, ""))
    assert warning.startswith("security.trusted_authserv_id: not set, so agent powers by mail "
                              "are off")


def test_trust_from_header_warns_that_anyone_can_act_as_an_agent(tmp_path: Path) -> None:
    """The knowing choice is still named as a risk, every time."""
    (warning,) = security_warnings(settings_with(tmp_path, "trust_from_header = true"))
    assert warning.startswith("security.trust_from_header: the From address alone grants "
                              "agent powers")


def test_authserv_id_set_warns_of_nothing(tmp_path: Path) -> None:
    """The secure setup has no warning; with trust_from_header too, that key is ignored."""
    secure = settings_with(tmp_path, 'trusted_authserv_id = "mx.example.org"')
    assert security_warnings(secure) == []
    both = settings_with(tmp_path, 'trusted_authserv_id = "mx.example.org"\n'
                                   "trust_from_header = true")
    (warning,) = security_warnings(both)
    assert warning.startswith("security.trust_from_header: ignored")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('trust_from_header = "yes"', "security.trust_from_header"),
        ("trust_from_header = 1", "security.trust_from_header"),
        ("trusted_authres_fields = 0", "security.trusted_authres_fields"),
        ("trusted_authres_fields = 11", "security.trusted_authres_fields"),
        ('trusted_authres_fields = "2"', "security.trusted_authres_fields"),
        ("trust_from_heder = true", "security.trust_from_heder"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    """Only a real boolean opens From trust; a count out of range or a typo is an error."""
    with pytest.raises(ConfigError) as raised:
        settings_with(tmp_path, line)
    assert key in [problem.key for problem in raised.value.problems]
