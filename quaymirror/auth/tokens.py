"""Bearer-token authentication through authlib's resource protector."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import g, request
from sqlalchemy import Label, Select, bindparam, select
from sqlalchemy.orm import Session, aliased, joinedload

from quaymirror.accounts.models import User
from quaymirror.auth import scopes as scope_names
from quaymirror.auth.models import AccessToken, BearerChecks
from quaymirror.db import utcnow
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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the permission rules read it: the user's id and flags and the scopes the token
    grants (implications expanded). A hot read that selected its caller itself gets just this
    (:func:`caller_from_values`); both paths are decided by the same rules."""

    user_id: int
    is_robot: bool
    is_superuser: bool
    scopes: frozenset[str]

    def has_scope(self, name: str) -> bool:
        return name in self.scopes


@dataclass(frozen=True, slots=True)
class Caller(Principal):
    """Who is calling, as the ORM path loads it: also the token's owner, to write with."""

    user: User

    @classmethod
    def of(cls, user: User, scopes: frozenset[str]) -> Caller:
        return cls(user.id, user.is_robot, user.is_superuser, scopes, user)


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


_T = TypeVar("_T")


def _bearer_token(protector: ResourceProtector, find: Callable[[_Validator, str], _T | None]) -> _T | None:
    """The request's valid bearer token, or None: authlib's rules without its request wrapper.

    Same parsing as ``ResourceProtector.parse_request_authorization`` (header split once on
    whitespace, token type case-insensitive) and the same checks as
    ``BearerTokenValidator.validate_token`` (unknown, expired or revoked → None), but without
    building authlib's JSON request object on every call, which cost more than the lookup.
    ``find(validator, raw)`` is the token whose hash is the raw token's, or None.
    """
    given = _header_token()
    if given is None:
        return None
    try:
        validator = protector.get_token_validator(given[0])
        token = find(validator, given[1])
        validator.validate_token(token, None, None)
    except OAuth2Error:
        return None
    return token


def _granted(scope: str) -> frozenset[str]:
    """What a stored scope string grants; one unknown scope in it grants nothing, as in Quay."""
    try:
        return scope_names.granted(scope)
    except scope_names.UnknownScope:
        return frozenset()


def current_caller(protector: ResourceProtector, required: bool = True) -> Caller | None:
    """The authenticated caller of this request (its token looked up in the request's session), or None
    when anonymous and allowed.

    Missing, garbage and expired tokens all answer Quay's 401 ``invalid_token``.
    """
    if "caller" in g:
        caller = g.caller
    else:
        token = _bearer_token(protector, _Validator.authenticate_token)
        caller = None
        if token is not None:
            g.authlib_server_oauth2_token = token
            caller = Caller.of(token.user, _granted(token.scope))
        g.caller = caller
    if caller is None and required:
        raise AuthenticationRequired()
    return caller


# A hot read may authenticate in its own statement (one round trip instead of two): it outer-joins the
# token whose hash is the bind parameter ``digest`` (:func:`request_digest`) and its user with
# :func:`join_caller`, selects :func:`caller_columns`, and hands their values to :func:`caller_from_values`,
# which applies every rule of the plain lookup to them.
_TOKEN = aliased(AccessToken, name="caller_token")
_CALLER = aliased(User, name="caller")
CALLER_ID = _TOKEN.user_id  # the caller's user id in such a statement (NULL when anonymous)


def request_digest() -> str:
    """The hash of the request's bearer token; '' (no token has it) when the request has none."""
    given = _header_token()
    return hash_token(given[1]) if given is not None else ""


def join_caller(query: Select) -> Select:
    return query.outerjoin(_TOKEN, _TOKEN.token_hash == bindparam("digest")).outerjoin(
        _CALLER, _CALLER.id == _TOKEN.user_id)


def caller_columns() -> tuple[Label, ...]:
    """The token's hash, scope and expiry and its user's id and flags, labelled ``caller_*`` (all NULL when
    no token has the digest). Only what the token rules and the permission rules read: each column costs
    its conversion on every request, and the robot's encrypted secret has no business in a read."""
    return (_TOKEN.token_hash.label("caller_token_hash"), _TOKEN.scope.label("caller_scope"),
            _TOKEN.expires_at.label("caller_expires_at"), _TOKEN.user_id.label("caller_id"),
            _CALLER.is_robot.label("caller_is_robot"), _CALLER.is_superuser.label("caller_is_superuser"))


@dataclass(frozen=True, slots=True)
class _RowToken(BearerChecks):
    """A token as a hot read selected it."""

    scope: str
    expires_at: datetime | None
    user_id: int
    is_robot: bool
    is_superuser: bool


def caller_from_values(protector: ResourceProtector, *, token_hash: str | None, scope: str | None,
                    expires_at: datetime | None, user_id: int | None, is_robot: bool | None,
                    is_superuser: bool | None) -> Principal | None:
    """The caller of this request from the values of :func:`caller_columns` (see :func:`join_caller`), by
    the rules of :func:`current_caller`; None when anonymous (no, garbage or expired token).

    The statement found the token by its hash; the same constant-time check as :func:`lookup` is the
    actual check. Nothing is kept on ``g``: a Principal is no :class:`Caller`, and the ORM path looks its
    own up.
    """
    def find(_validator: _Validator, raw: str) -> _RowToken | None:
        if token_hash is None or scope is None or user_id is None \
                or not hmac.compare_digest(token_hash, hash_token(raw)):
            return None
        return _RowToken(scope, expires_at, user_id, bool(is_robot), bool(is_superuser))

    token = _bearer_token(protector, find)
    if token is None:
        return None
    return Principal(token.user_id, token.is_robot, token.is_superuser, _granted(token.scope))
