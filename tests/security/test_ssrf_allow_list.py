"""QUAYMIRROR_SSRF_ALLOWED_HOSTS is parsed once, strictly, at start-up."""

from __future__ import annotations

import ipaddress

import pytest

from quaymirror.security.ssrf import AllowList
from quaymirror.settings import Settings, SettingsError


def from_env(tmp_path, value: str) -> Settings:
    return Settings.from_env({"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k",
                              "QUAYMIRROR_SSRF_ALLOWED_HOSTS": value})


@pytest.mark.parametrize(("value", "bad"), [
    ("127.0.0.1/33", "127.0.0.1/33"),
    ("10.0.0.0/8x", "10.0.0.0/8x"),
    ("registry.internal, bad host", "bad host"),
    ("-x-", "-x-"),
    ("10.0.0.0/8,registry.internal:5000", "registry.internal:5000"),
    ("0x7f.1", "0x7f.1"),
])
def test_a_bad_entry_stops_the_start_naming_the_variable_and_the_entry(tmp_path, value, bad):
    with pytest.raises(SettingsError) as error:
        from_env(tmp_path, value)
    assert str(error.value) == f"QUAYMIRROR_SSRF_ALLOWED_HOSTS: {bad!r} is not an IP address, a CIDR or a host name"
    assert "\n" not in str(error.value)


def test_good_entries_are_parsed_once_into_networks_and_names(tmp_path):
    allowed = from_env(tmp_path, " 127.0.0.1/32, Registry.Internal,,[fd00::/8], 10.1.2.3 ").ssrf_allowed_hosts
    assert isinstance(allowed, AllowList)
    assert allowed == ("127.0.0.1/32", "Registry.Internal", "[fd00::/8]", "10.1.2.3")
    assert allowed.networks == tuple(ipaddress.ip_network(n) for n in ("127.0.0.1/32", "fd00::/8", "10.1.2.3/32"))
    assert allowed.names == {"registry.internal"}
    assert from_env(tmp_path, "").ssrf_allowed_hosts == ()
