"""Bearer-token authentication through authlib's resource protector."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import g, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, aliased, joinedload

from quaymirror.accounts.models import User
from quaymirror.auth import scopes as scope_names
from quaymirror.auth.models import AccessToken
from quaymirror.db import Plain, utcnow
from quaymirror.errors import AuthenticationRequired

TOKEN_BYTES = 30


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def issue(session: Session, user: User, scopes: frozenset[str], expires_in: int | None = None) -> str:
    """Create a token and return its raw value: the only time it exists in clear."""
    raw = secrets.token_urlsafe(TOKEN_BYTES)
    expires = utcnow() + timedelta(seconds=expires_in) if expires_in is not None else None
    session.add(AccessToken(user_id=user.id, token_hash=hash_token(raw), scope=" ".join(sorted(scopes)),
                            expires_at=expires))
    session.flush()
    return raw


# Built once: the token and its owner in one query (no lazy load of ``token.user`` afterwards).
_LOOKUP = (
    select(AccessToken)
    .options(joinedload(AccessToken.user, innerjoin=True))
    .where(AccessToken.token_hash == bindparam("digest"))
    .limit(1)
)


def lookup(session: Session, raw: str) -> AccessToken | None:
    digest = hash_token(raw)
    token = session.scalars(_LOOKUP, {"digest": digest}).first()
    # The index lookup finds the row; the constant-time compare is the actual check.
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        return None
    return token


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's owner and the scopes the token grants (implications expanded)."""

    user: User
    scopes: frozenset[str]

    def has_scope(self, name: str) -> bool:
        return name in self.scopes


class _Validator(BearerTokenValidator):
    def __init__(self, session_factory) -> None:
        super().__init__()
        self._session_factory = session_factory

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        return lookup(self._session_factory(), token_string)


def make_protector(session_factory) -> ResourceProtector:
    protector = ResourceProtector()
    protector.register_token_validator(_Validator(session_factory))
    return protector


def _header_token() -> tuple[str, str] | None:
    """(token type, raw token) from the Authorization header, split as authlib does; None when absent."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    parts = header.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _bearer_token(protector: ResourceProtector, found: AccessToken | None | bool = False) -> AccessToken | None:
    """The request's valid bearer token, or None: authlib's rules without its request wrapper.

    Same parsing as ``ResourceProtector.parse_request_authorization`` (header split once on
    whitespace, token type case-insensitive) and the same checks as
    ``BearerTokenValidator.validate_token`` (unknown, expired or revoked → None), but without
    building authlib's JSON request object on every call, which cost more than the lookup.
    ``found``: the token row a statement already read by :func:`request_digest` (None: no such
    token), instead of looking it up again.
    """
    given = _header_token()
    if given is None:
        return None
    try:
        validator = protector.get_token_validator(given[0])
        if found is False:
            token = validator.authenticate_token(given[1])
        else:
            # Same constant-time check as lookup() on the row the caller's statement found.
            token = found if found is not None and hmac.compare_digest(found.token_hash, hash_token(given[1])) else None
        validator.validate_token(token, None, None)
    except OAuth2Error:
        return None
    g.authlib_server_oauth2_token = token
    return token


# A hot read may authenticate in its own statement (one round trip instead of two): it outer-joins
# the token whose hash is the bind parameter ``digest`` (:func:`request_digest`) and its user with
# :func:`join_caller`, selects :func:`caller_columns`, and hands :func:`token_in` of its row to
# ``current_caller(found=...)``, which applies every rule of the plain lookup to it.
_TOKEN = aliased(AccessToken, name="caller_token")
_CALLER = aliased(User, name="caller")
# What the token rules and the permission rules read (not the robot's encrypted secret, not dates
# nobody reads: each column costs its conversion on every request).
_TOKEN_KEYS = ("id", "user_id", "token_hash", "scope", "expires_at")
_USER_KEYS = ("id", "username", "is_organization", "is_robot", "is_superuser")
CALLER_ID = _TOKEN.user_id  # the caller's user id in such a statement (NULL when anonymous)


def request_digest() -> str:
    """The hash of the request's bearer token; '' (no token has it) when the request has none."""
    given = _header_token()
    return hash_token(given[1]) if given is not None else ""


def join_caller(query):
    return query.outerjoin(_TOKEN, _TOKEN.token_hash == bindparam("digest")).outerjoin(
        _CALLER, _CALLER.id == _TOKEN.user_id)


def caller_columns() -> tuple:
    return (*(getattr(_TOKEN, key).label(f"caller_token_{key}") for key in _TOKEN_KEYS),
            *(getattr(_CALLER, key).label(f"caller_user_{key}") for key in _USER_KEYS))


class _DetachedToken(Plain):
    # The validator interface, AccessToken's own rules.
    get_scope = AccessToken.get_scope
    is_expired = AccessToken.is_expired
    is_revoked = AccessToken.is_revoked


def token_in(row) -> AccessToken | None:
    """The token (with its user) of a row selected with :func:`caller_columns`, as read-only plain
    objects with the models' attributes (enough for the permission rules, never for a write)."""
    if getattr(row, "caller_token_id", None) is None:
        return None
    token = _DetachedToken(**{key: getattr(row, f"caller_token_{key}") for key in _TOKEN_KEYS})
    token.user = Plain(**{key: getattr(row, f"caller_user_{key}") for key in _USER_KEYS})
    return token  # type: ignore[return-value]


def current_caller(protector: ResourceProtector, required: bool = True,
                   found: AccessToken | None | bool = False) -> Caller | None:
    """The authenticated caller of this request, or None when anonymous and allowed.

    Missing, garbage and expired tokens all answer Quay's 401 ``invalid_token``. ``found``: see
    :func:`_bearer_token`.
    """
    if "caller" in g:
        caller = g.caller
    else:
        token = _bearer_token(protector, found)
        caller = None
        if token is not None:
            try:
                granted = scope_names.granted(token.scope)
            except scope_names.UnknownScope:
                granted = frozenset()
            caller = Caller(user=token.user, scopes=granted)
        g.caller = caller
    if caller is None and required:
        raise AuthenticationRequired()
    return caller
