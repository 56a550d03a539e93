"""Fixtures of the organization mirror tests: Quay's recorded fixture set (its organizations, robots and
tokens), the DNS environment of the recording, and a client with Quay's test configuration."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from quaymirror.security import ssrf

PUBLIC_ADDRESS = "93.184.216.34"
DNS_TABLE = {"localhost": ["127.0.0.1"], "private.example.com": ["10.0.0.1"]}

# The tokens of the recording, by label: (owner, scopes).
TOKENS = {
    "ORGADMIN": ("devtable", "org:admin"),
    "ADMIN": ("devtable", "repo:admin"),
    "READ": ("devtable", "repo:read"),
    "ALL": ("devtable", "repo:admin org:admin"),
    "ORGREADER": ("reader", "org:admin"),
    "ORGRANDOM": ("randomuser", "org:admin"),
    "SUPER": ("devtable", "super:user org:admin repo:admin"),
    "FRESH_ORGADMIN": ("freshuser", "org:admin"),
}


def resolver(host: str) -> list[str]:
    """The recording's DNS: every name is public but localhost and ``*.invalid`` (which do not resolve)."""
    name = host.lower().rstrip(".")
    if name == "invalid" or name.endswith(".invalid"):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return list(DNS_TABLE.get(name, [PUBLIC_ADDRESS]))


@pytest.fixture(autouse=True)
def recorded_dns() -> Iterator[None]:
    """No organization mirror test ever asks the real DNS."""
    with ssrf.use_resolver(resolver):
        yield


@pytest.fixture
def orgs(world):
    """Quay's fixtures of the recording on top of ``world``: ``sellnsmall`` and ``library`` (empty, devtable
    owns them; randomuser is also an admin of sellnsmall), ``proxyorg`` (empty), ``buynlarge`` (devtable an
    admin, reader a plain member, one repository), ``subscriptionsorg`` (devtable not in it), the robots
    ``<org>+mirrorbot`` and one token per label of ``TOKENS``."""
    from quaymirror.accounts import service as accounts
    from quaymirror.accounts.models import OrganizationMember

    world.user("randomuser")
    world.org("sellnsmall", owner="devtable")
    world.org("library", owner="devtable")
    world.org("proxyorg", owner="devtable")
    world.org("subscriptionsorg", owner="freshuser")
    with world.database.transaction() as s:
        for org, user, role in (("sellnsmall", "randomuser", "admin"), ("buynlarge", "devtable", "admin"),
                                ("buynlarge", "reader", "member")):
            s.add(OrganizationMember(organization_id=accounts.get_by_name(s, org).id,
                                     user_id=accounts.get_by_name(s, user).id, role=role))
    world.repo("buynlarge/orgrepo")
    for org in ("sellnsmall", "library", "proxyorg"):
        world.robot(f"{org}+mirrorbot")
    for label, (owner, scopes) in TOKENS.items():
        world.token(label, owner, scopes)
    return world


@pytest.fixture
def quay_client(app_with):
    """A client of an app configured as Quay's test configuration: superusers have full access."""
    return app_with(superusers_full_access=True).test_client()


@pytest.fixture
def client_allowing_loopback(app_with):
    """A client whose SSRF allow list lets the organization mirror reach a stand-in upstream on 127.0.0.1."""
    return app_with(ssrf_allowed_hosts=("127.0.0.1",)).test_client()
