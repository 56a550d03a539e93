"""What the mirror API's tests share: Quay's DNS environment, Quay's test bodies, clients with other settings.

``quay_dns`` is not autouse: the modules that send mirror bodies through the API ask for it
(``pytestmark = pytest.mark.usefixtures("quay_dns")``), so those tests never ask the real DNS, and the
worker's tests keep the resolver they set up themselves.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from quaymirror.security import ssrf

MIRROR = "/api/v1/repository/devtable/simple/mirror"
DROP = object()  # mirror_body(key=DROP) leaves the key out
PUBLIC_ADDRESS = "93.184.216.34"
# Names the tests use to reach the SSRF rules through DNS.
DNS_TABLE = {
    "localhost": ["127.0.0.1"],
    "private.example.com": ["10.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mixed.example.com": [PUBLIC_ADDRESS, "192.168.1.10"],
}


def quay_resolver(host: str) -> list[str]:
    """Quay's capture environment: every name is public, except localhost and ``*.invalid``."""
    name = host.lower().rstrip(".")
    if name == "invalid" or name.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return list(DNS_TABLE.get(name, [PUBLIC_ADDRESS]))


@pytest.fixture
def quay_dns() -> Iterator[None]:
    """No mirror test ever asks the real DNS."""
    with ssrf.use_resolver(quay_resolver):
        yield


@pytest.fixture
def admin(world) -> dict[str, str]:
    """Headers of devtable's repo:admin token."""
    return world.headers("admin")


def mirror_body(**overrides: Any) -> dict[str, Any]:
    """The body of Quay's own API tests (test_mirror.py ``_setup_mirror``) as a POST."""
    body: dict[str, Any] = {
        "is_enabled": True,
        "external_reference": "quay.io/redhat/quay",
        "sync_interval": 5000,
        "sync_start_date": "2020-01-02T06:30:00Z",
        "external_registry_username": "fakeUsername",
        "external_registry_password": "fakePassword",
        "external_registry_config": {
            "verify_tls": True,
            "unsigned_images": False,
            "proxy": {
                "http_proxy": "http://insecure.proxy.corp",
                "https_proxy": "https://secure.proxy.corp",
                "no_proxy": "mylocalhost",
            },
        },
        "robot_username": "devtable+dtrobot",
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["latest", "3.3*", "foo"]},
        "skopeo_timeout_interval": 300,
    }
    for key, value in overrides.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def post_body(robot: str, reference: str = "quay.io/a/b", **overrides: Any) -> dict[str, Any]:
    """A short mirror body (every tag, TLS verified) for ``robot``, as the end-to-end tests POST it."""
    body: dict[str, Any] = {
        "is_enabled": True, "external_reference": reference, "sync_interval": 3600,
        "sync_start_date": "2024-01-01T00:00:00Z", "robot_username": robot,
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["*"]},
        "external_registry_config": {"verify_tls": True}, "skopeo_timeout_interval": 300,
    }
    body.update(overrides)
    return body


@pytest.fixture
def client_with(app_with):
    """A test client of an app whose settings differ (same database): ``client_with(feature_sparse_index=True)``."""

    def make(**overrides: Any):
        return app_with(**overrides).test_client()

    return make
