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
from sqlalchemy.orm import Session, joinedload

from quaymirror.accounts.models import User
from quaymirror.auth import scopes as scope_names
from quaymirror.auth.models import AccessToken
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


def _bearer_token(protector: ResourceProtector) -> AccessToken | None:
    """The request's valid bearer token, or None: authlib's rules without its request wrapper.

    Same parsing as ``ResourceProtector.parse_request_authorization`` (header split once on
    whitespace, token type case-insensitive) and the same checks as
    ``BearerTokenValidator.validate_token`` (unknown, expired or revoked → None), but without
    building authlib's JSON request object on every call, which cost more than the lookup.
    """
    header = request.headers.get("Authorization")
    if not header:
        return None
    parts = header.split(None, 1)
    if len(parts) != 2:
        return None
    try:
        validator = protector.get_token_validator(parts[0])
        token = validator.authenticate_token(parts[1])
        validator.validate_token(token, None, None)
    except OAuth2Error:
        return None
    g.authlib_server_oauth2_token = token
    return token


def current_caller(protector: ResourceProtector, required: bool = True) -> Caller | None:
    """The authenticated caller of this request, or None when anonymous and allowed.

    Missing, garbage and expired tokens all answer Quay's 401 ``invalid_token``.
    """
    if "caller" in g:
        caller = g.caller
    else:
        token = _bearer_token(protector)
        caller = None
        if token is not None:
            try:
                granted = scope_names.expand(scope_names.parse(token.scope))
            except scope_names.UnknownScope:
                granted = frozenset()
            caller = Caller(user=token.user, scopes=granted)
        g.caller = caller
    if caller is None and required:
        raise AuthenticationRequired()
    return caller
