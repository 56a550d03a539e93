"""Quay's OAuth scopes and what each implies."""

from __future__ import annotations

import functools

REPO_READ = "repo:read"
REPO_WRITE = "repo:write"
REPO_ADMIN = "repo:admin"
REPO_CREATE = "repo:create"
USER_READ = "user:read"
USER_ADMIN = "user:admin"
ORG_ADMIN = "org:admin"
SUPERUSER = "super:user"

ALL_SCOPES = (REPO_READ, REPO_WRITE, REPO_ADMIN, REPO_CREATE, USER_READ, USER_ADMIN, ORG_ADMIN, SUPERUSER)

# admin implies write implies read, as in Quay's auth/scopes.py.
IMPLIED = {
    REPO_ADMIN: {REPO_ADMIN, REPO_WRITE, REPO_READ},
    REPO_WRITE: {REPO_WRITE, REPO_READ},
    USER_ADMIN: {USER_ADMIN, USER_READ},
}

# The highest repository role a token's scopes allow.
SCOPE_ROLE = {REPO_READ: "read", REPO_WRITE: "write", REPO_ADMIN: "admin"}


class UnknownScope(ValueError):
    pass


def parse(scope_string: str) -> frozenset[str]:
    """Split on spaces or commas; one unknown scope invalidates the whole string, as in Quay."""
    names = [part for part in scope_string.replace(",", " ").split() if part]
    unknown = [name for name in names if name not in ALL_SCOPES]
    if unknown:
        raise UnknownScope(f"Unknown scope: {', '.join(unknown)}")
    return frozenset(names)


def expand(scopes: frozenset[str]) -> frozenset[str]:
    out: set[str] = set()
    for name in scopes:
        out |= IMPLIED.get(name, {name})
    return frozenset(out)


@functools.lru_cache(maxsize=256)
def granted(scope_string: str) -> frozenset[str]:
    """What a token's stored scope string grants (implications expanded); tokens share a handful of
    strings, so each is parsed once per process. UnknownScope as :func:`parse`."""
    return expand(parse(scope_string))
