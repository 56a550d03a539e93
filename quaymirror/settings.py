"""All configuration, read once from ``QUAYMIRROR_*`` environment variables.

The embedded default needs nothing: an instance folder next to the working
directory holding a SQLite database, a generated secret key and the OCI
storage.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

PREFIX = "QUAYMIRROR_"


class SettingsError(ValueError):
    """A setting has a value we cannot use; raised at start-up, never per request."""


def _bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{PREFIX}{name} must be true or false, not {raw!r}")


def _number(name: str, raw: str | None, default: float, kind: type = int, minimum: float = 0) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{PREFIX}{name} must be at least {minimum}")
    return value


def _list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _secret_key(instance_path: Path) -> str:
    """Read the instance's secret key, creating it (mode 0600) on first run."""
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


@dataclass(frozen=True)
class Settings:
    instance_path: Path
    database_url: str
    secret_key: str
    ssrf_allowed_hosts: tuple[str, ...] = ()
    superusers_full_access: bool = False
    feature_sparse_index: bool = False
    storage: str = ""
    storage_username: str | None = None
    storage_password: str | None = field(default=None, repr=False)
    storage_tls_verify: bool = True
    worker_poll_seconds: float = 10.0
    worker_concurrency: int = 2
    tag_concurrency: int = 4
    lease_seconds: int = 600
    skopeo_path: str = "skopeo"
    api_workers: int = 2
    max_content_length: int = 1024 * 1024

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(PREFIX + name)

        instance_path = Path(get("INSTANCE_PATH") or "./instance").resolve()
        database_url = get("DATABASE_URL") or f"sqlite:///{instance_path / 'quaymirror.db'}"
        secret_key = get("SECRET_KEY") or _secret_key(instance_path)
        storage = get("STORAGE") or f"oci:{instance_path / 'storage'}"
        if not (storage.startswith(("oci:", "docker://"))):
            raise SettingsError(f"{PREFIX}STORAGE must start with oci: or docker://, not {storage!r}")
        return cls(
            instance_path=instance_path,
            database_url=database_url,
            secret_key=secret_key,
            ssrf_allowed_hosts=_list(get("SSRF_ALLOWED_HOSTS")),
            superusers_full_access=_bool("SUPERUSERS_FULL_ACCESS", get("SUPERUSERS_FULL_ACCESS"), False),
            feature_sparse_index=_bool("FEATURE_SPARSE_INDEX", get("FEATURE_SPARSE_INDEX"), False),
            storage=storage,
            storage_username=get("STORAGE_USERNAME") or None,
            storage_password=get("STORAGE_PASSWORD") or None,
            storage_tls_verify=_bool("STORAGE_TLS_VERIFY", get("STORAGE_TLS_VERIFY"), True),
            worker_poll_seconds=_number("WORKER_POLL_SECONDS", get("WORKER_POLL_SECONDS"), 10.0, float, 0.05),
            worker_concurrency=int(_number("WORKER_CONCURRENCY", get("WORKER_CONCURRENCY"), 2, int, 1)),
            tag_concurrency=int(_number("TAG_CONCURRENCY", get("TAG_CONCURRENCY"), 4, int, 1)),
            lease_seconds=int(_number("LEASE_SECONDS", get("LEASE_SECONDS"), 600, int, 1)),
            skopeo_path=get("SKOPEO") or "skopeo",
            api_workers=int(_number("API_WORKERS", get("API_WORKERS"), 2, int, 1)),
        )
