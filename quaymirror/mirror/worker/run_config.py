"""What a sync run is told to mirror: the :class:`Mirror` value, and where it comes from today.

A run never reads the configuration tables itself: it is handed a source (a
callable giving a :class:`Mirror`), read once at its start: a repository
mirror's ``repomirrorconfig`` row (:func:`load_mirror`), or, for a repository
an organization mirror discovered, the organization's configuration
(``quaymirror.orgmirror.repo_sync``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quaymirror.db import Database
from quaymirror.mirror.models import RepoMirrorConfig, UpstreamAccess
from quaymirror.mirror.worker import reasons
from quaymirror.mirror.worker.reasons import RunFailed
from quaymirror.security.secrets import DecryptionFailed, SecretBox
from quaymirror.settings import Settings

# Quay's default skopeo timeout (seconds) for a configuration that has none.
DEFAULT_TIMEOUT = 300
# A shorter timeout could not even start skopeo.
MIN_TIMEOUT = 0.1


@dataclass
class Mirror:
    """What a run needs from the configuration, read once at its start."""

    config_id: int
    repository_id: int
    namespace: str
    name: str
    reference: str
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    verify_tls: bool
    unsigned: bool
    proxy: dict[str, Any]
    rules: list[str]
    timeout: float
    credentials_ok: bool = True
    # The platforms to mirror (Quay's architecture_filter, its values' order); empty: every platform.
    architecture_filter: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def pattern_message(self) -> str:
        return f"'{self.reference}' with tag pattern '{','.join(self.rules)}'"


# Where a run gets its Mirror: called once, at the start of the run; raises RunFailed when there is none.
MirrorSource = Callable[[], Mirror]


def upstream_access(settings: Settings, access: UpstreamAccess, skopeo_timeout: int | None) -> dict[str, Any]:
    """The :class:`Mirror` fields a configuration's :class:`UpstreamAccess` gives: its credentials decrypted
    (``credentials_ok`` false when they no longer decrypt), TLS, signatures, proxy, and the skopeo timeout
    within the instance's bound. Shared by every source, so that they read a configuration alike."""
    box = SecretBox(settings.secret_key)
    try:
        username = box.decrypt(access.external_registry_username)
        password = box.decrypt(access.external_registry_password)
        credentials_ok = True
    except DecryptionFailed:
        username = password = None
        credentials_ok = False
    external = access.external_registry_config
    timeout = float(skopeo_timeout or DEFAULT_TIMEOUT)
    if settings.skopeo_timeout_max:
        timeout = min(timeout, settings.skopeo_timeout_max)
    proxy = external.get("proxy")
    return {
        "username": username or None,
        "password": password,
        "credentials_ok": credentials_ok,
        "verify_tls": bool(external.get("verify_tls", True)),
        "unsigned": bool(external.get("unsigned_images", False)),
        "proxy": proxy if isinstance(proxy, dict) else {},
        "timeout": max(timeout, MIN_TIMEOUT),
    }


def load_mirror(database: Database, settings: Settings, config_id: int) -> Mirror:
    """The Mirror of a ``repomirrorconfig`` row, with its credentials decrypted."""
    with database.transaction() as session:
        config = session.get(RepoMirrorConfig, config_id)
        if config is None:
            raise RunFailed(reasons.UNKNOWN_ERROR, "the mirror configuration was deleted")
        repository = config.repository
        rules = config.root_rule.rule_value if config.root_rule is not None else []
        return Mirror(
            config_id=config.id,
            repository_id=repository.id,
            namespace=repository.namespace.username,
            name=repository.name,
            reference=config.external_reference,
            rules=[r for r in rules if isinstance(r, str)],
            architecture_filter=tuple(a for a in config.architecture_filter if isinstance(a, str)),
            **upstream_access(settings, config, config.skopeo_timeout),
        )
