"""What a sync run is told to mirror: the :class:`Mirror` value, and where it comes from today.

A run never reads the configuration tables itself: it is handed a source (a
callable giving a :class:`Mirror`), read once at its start. Today every run's
source is a ``repomirrorconfig`` row (:func:`load_mirror`); a repository
mirrored as part of an organization would be run by the same run with a
source of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quaymirror.db import Database
from quaymirror.mirror.models import RepoMirrorConfig
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


def load_mirror(database: Database, settings: Settings, config_id: int) -> Mirror:
    """The Mirror of a ``repomirrorconfig`` row, with its credentials decrypted."""
    with database.transaction() as session:
        config = session.get(RepoMirrorConfig, config_id)
        if config is None:
            raise RunFailed(reasons.UNKNOWN_ERROR, "the mirror configuration was deleted")
        repository = config.repository
        external = config.external_registry_config
        box = SecretBox(settings.secret_key)
        credentials_ok = True
        try:
            username = box.decrypt(config.external_registry_username)
            password = box.decrypt(config.external_registry_password)
        except DecryptionFailed:
            username = password = None
            credentials_ok = False
        timeout = float(config.skopeo_timeout or DEFAULT_TIMEOUT)
        if settings.skopeo_timeout_max:
            timeout = min(timeout, settings.skopeo_timeout_max)
        rules = config.root_rule.rule_value if config.root_rule is not None else []
        proxy = external.get("proxy")
        return Mirror(
            config_id=config.id,
            repository_id=repository.id,
            namespace=repository.namespace.username,
            name=repository.name,
            reference=config.external_reference,
            username=username or None,
            password=password,
            verify_tls=bool(external.get("verify_tls", True)),
            unsigned=bool(external.get("unsigned_images", False)),
            proxy=proxy if isinstance(proxy, dict) else {},
            rules=[r for r in rules if isinstance(r, str)],
            timeout=max(timeout, MIN_TIMEOUT),
            credentials_ok=credentials_ok,
            architecture_filter=tuple(a for a in config.architecture_filter if isinstance(a, str)),
        )
