"""Tokens and scopes below the HTTP layer: what is stored, what a scope string means, how roles are capped."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from quaymirror.accounts.models import User
from quaymirror.auth import scopes
from quaymirror.auth.models import AccessToken
from quaymirror.auth.permissions import _cap, superuser_passes
from quaymirror.auth.tokens import Caller, hash_token, issue, lookup


@pytest.mark.parametrize(("text", "expected"), [
    ("repo:read", {"repo:read"}),
    ("repo:read repo:write", {"repo:read", "repo:write"}),
    ("repo:read,repo:write", {"repo:read", "repo:write"}),
    (" repo:admin ,, super:user ", {"repo:admin", "super:user"}),
    ("", set()),
])
def test_parse(text, expected):
    assert scopes.parse(text) == expected


@pytest.mark.parametrize("text", ["repo:everything", "repo:read bogus", "REPO:READ", "direct_user_login"])
def test_one_unknown_scope_invalidates_the_string(text):
    with pytest.raises(scopes.UnknownScope):
        scopes.parse(text)


@pytest.mark.parametrize(("granted", "expanded"), [
    ({"repo:admin"}, {"repo:admin", "repo:write", "repo:read"}),
    ({"repo:write"}, {"repo:write", "repo:read"}),
    ({"repo:read"}, {"repo:read"}),
    ({"user:admin"}, {"user:admin", "user:read"}),
    ({"org:admin"}, {"org:admin"}),
    ({"repo:create"}, {"repo:create"}),
    ({"super:user"}, {"super:user"}),
])
def test_implied_scopes(granted, expanded):
    assert scopes.expand(frozenset(granted)) == expanded


@pytest.mark.parametrize(("role", "granted", "capped"), [
    ("admin", {"repo:admin"}, "admin"),
    ("admin", {"repo:write"}, "write"),
    ("admin", {"repo:read"}, "read"),
    ("write", {"repo:admin"}, "write"),
    ("read", {"repo:admin"}, "read"),
    ("admin", {"user:admin", "org:admin", "repo:create", "super:user"}, None),
    (None, {"repo:admin"}, None),
])
def test_role_capped_by_scope(role, granted, capped):
    caller = Caller.of(User(username="x"), scopes.expand(frozenset(granted)))
    assert _cap(role, caller) == capped


@pytest.mark.parametrize(("superuser", "scope", "full_access", "passes"), [
    (True, "super:user", True, True),
    (True, "super:user", False, False),
    (True, "repo:admin", True, False),
    (False, "super:user", True, False),
])
def test_superuser_rule(superuser, scope, full_access, passes):
    caller = Caller.of(User(username="x", is_superuser=superuser), frozenset({scope}))
    assert superuser_passes(caller, full_access) is passes


def test_only_a_hash_is_stored(world, database):
    with database.transaction() as s:
        user = s.scalars(select(User).where(User.username == "reader")).one()
        raw = issue(s, user, frozenset({"repo:read", "user:read"}))
    with database.transaction() as s:
        stored = s.scalars(select(AccessToken).where(AccessToken.scope == "repo:read user:read")).one()
        assert stored.token_hash == hash_token(raw) != raw
        assert len(stored.token_hash) == 64
        assert stored.scope == "repo:read user:read"
        assert lookup(s, raw).id == stored.id
        assert lookup(s, raw + "x") is None
        assert lookup(s, stored.token_hash) is None  # the hash itself is no token


def test_tokens_are_unique_and_unguessable(world, database):
    with database.transaction() as s:
        user = s.scalars(select(User).where(User.username == "reader")).one()
        raws = {issue(s, user, frozenset({"repo:read"})) for _ in range(20)}
    assert len(raws) == 20
    assert all(len(raw) >= 40 for raw in raws)


def test_expiry(world, database):
    with database.transaction() as s:
        user = s.scalars(select(User).where(User.username == "reader")).one()
        past = issue(s, user, frozenset({"repo:read"}), expires_in=-1)
        future = issue(s, user, frozenset({"repo:read"}), expires_in=60)
        forever = issue(s, user, frozenset({"repo:read"}))
    with database.transaction() as s:
        assert lookup(s, past).is_expired()
        assert not lookup(s, future).is_expired()
        assert not lookup(s, forever).is_expired()
        assert lookup(s, forever).expires_at is None
