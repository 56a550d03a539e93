"""All configuration, read once from ``QUAYMIRROR_*`` environment variables.

The embedded default needs nothing: an instance folder next to the working
directory holding a SQLite database, a generated secret key and the OCI
storage.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from quaymirror.security.ssrf import NOTHING_ALLOWED, AllowList

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


def _number(name: str, raw: str | None, default: float, kind: type = int, minimum: float = 0,
            maximum: float | None = None) -> float:
    """A number setting: unset gives ``default``; set, it must be a number in range.

    A value that is set but blank is refused rather than taken as the default (or as 0): it is
    almost always a templating mistake, and running with a number nobody chose is worse.
    """
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, not {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{PREFIX}{name} must be a number, not {raw!r}")
    if value < minimum:
        raise SettingsError(f"{PREFIX}{name} must be at least {minimum}, not {raw!r}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{PREFIX}{name} must be at most {maximum}, not {raw!r}")
    return value


def _optional_number(name: str, raw: str | None, kind: type, minimum: float) -> float | None:
    """A number setting whose default is "none": unset leaves it so; set, as :func:`_number`."""
    if raw is None:
        return None
    return _number(name, raw, minimum, kind, minimum)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(raw: str | None) -> str:
    if raw is None:
        return "INFO"
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level


def check_storage(storage: str) -> str:
    """``storage`` when it names a destination the worker can write to, else SettingsError.

    Checked when the settings are read, so ``serve`` refuses a bad destination at start instead of in
    its gunicorn worker, where the embedded mirror worker is built.
    """
    if storage.startswith("oci:") and len(storage) > 4 and ":" not in storage[4:]:
        return storage
    if storage.startswith("docker://") and storage[9:].strip("/") and "/" not in storage[9:].strip("/"):
        return storage
    raise SettingsError(f"{PREFIX}STORAGE must be oci:<dir> (no ':' in it) or docker://<host[:port]>, "
                        f"not {storage!r}")


def _list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _allow_list(raw: str | None) -> AllowList:
    """The SSRF allow list; a bad entry stops the start (a typo would otherwise allow nothing, silently)."""
    try:
        return AllowList(_list(raw))
    except ValueError as error:
        raise SettingsError(f"{PREFIX}SSRF_ALLOWED_HOSTS: {error}") from None


def _secret_key(instance_path: Path) -> str:
    """Read the instance's secret key, creating it (mode 0600) on first run.

    Creation is atomic (write a private temp file, then hard-link it into place), so two processes
    starting together agree on one key and neither ever reads a half-written file.
    """
    path = instance_path / "secret_key"
    if not path.exists():
        instance_path.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".secret_key.", dir=instance_path)  # mode 0600
        key = secrets.token_urlsafe(48) + "\n"
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(key)
            os.link(temp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        except OSError:  # a file system without hard links: exclusive create instead
            try:
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                    handle.write(key)
            except FileExistsError:
                pass
        finally:
            os.unlink(temp)
    key = path.read_text().strip()
    if not key:
        raise SettingsError(f"{path} is empty: delete it to generate a new key, or set {PREFIX}SECRET_KEY")
    return key


def instance_path_from_env(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(PREFIX + "INSTANCE_PATH") or "./instance").resolve()


def database_url_from_env(env: Mapping[str, str] | None = None) -> str:
    """The database URL alone (for alembic), without touching the secret key."""
    env = os.environ if env is None else env
    return env.get(PREFIX + "DATABASE_URL") or f"sqlite:///{instance_path_from_env(env) / 'quaymirror.db'}"


@dataclass(frozen=True)
class Settings:
    instance_path: Path
    database_url: str
    secret_key: str
    ssrf_allowed_hosts: AllowList = NOTHING_ALLOWED
    superusers_full_access: bool = False
    feature_sparse_index: bool = False
    storage: str = ""
    storage_username: str | None = None
    storage_password: str | None = field(default=None, repr=False)
    storage_tls_verify: bool = True
    worker_poll_seconds: float = 10.0
    worker_concurrency: int = 2
    tag_concurrency: int = 8
    lease_seconds: int = 600
    # Each worker renews its heartbeat row this often; the row is stale after heartbeat.STALE_BEATS of these.
    heartbeat_seconds: float = 5.0
    # A failed mirror is retried no sooner than this (Quay: at the next 30 s pass).
    retry_seconds: float = 30.0
    skopeo_path: str = "skopeo"
    # Upper bound (seconds) on every skopeo command, below each mirror's skopeo_timeout_interval.
    skopeo_timeout_max: float | None = None
    # Sync runs kept per repository in the history tables.
    history_keep: int = 50
    api_workers: int = 2
    # Threads per gunicorn process: 1-3 gave the best throughput and p99 under 32 keep-alive clients on
    # 2 cores, 4-8 queue requests behind the GIL (benchmarks/api); 2 keeps one slow request (DNS) from
    # holding a process.
    api_threads: int = 2
    # ``quaymirror worker`` serves Prometheus /metrics here (0: not at all).
    metrics_port: int = 9108
    metrics_host: str = "127.0.0.1"
    # Quay's REPO_MIRROR_WORKER_REPLICAS: the worker processes deployed (None: not said). The mirror
    # health is degraded while fewer report in.
    worker_replicas: int | None = None
    max_content_length: int = 1024 * 1024
    # GET /mirror answers from a per-process cache while the database is unchanged (db.ReadCache).
    read_cache: bool = True
    # The level of the long-running commands' logs (serve, worker): one of LOG_LEVELS.
    log_level: str = "INFO"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)

    def with_skopeo_resolved(self) -> Settings:
        """These settings with ``skopeo_path`` as the absolute path of the executable it names.

        For the commands that run a worker, at their start: without it a missing skopeo fails every
        mirror, one by one, instead of the process. Absolute, because skopeo runs in a run directory.
        """
        found = shutil.which(self.skopeo_path)
        if found is None:
            raise SettingsError(f"{PREFIX}SKOPEO must be an executable (a path, or a name on PATH), "
                                f"not {self.skopeo_path!r}")
        return self.with_overrides(skopeo_path=os.path.abspath(found))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(PREFIX + name)

        instance_path = instance_path_from_env(env)
        database_url = database_url_from_env(env)
        storage = check_storage(get("STORAGE") or f"oci:{instance_path / 'storage'}")
        secret_key = get("SECRET_KEY") or ""  # else generated below, once every other setting is good
        settings = cls(
            instance_path=instance_path,
            database_url=database_url,
            secret_key=secret_key,
            ssrf_allowed_hosts=_allow_list(get("SSRF_ALLOWED_HOSTS")),
            superusers_full_access=_bool("SUPERUSERS_FULL_ACCESS", get("SUPERUSERS_FULL_ACCESS"), False),
            feature_sparse_index=_bool("FEATURE_SPARSE_INDEX", get("FEATURE_SPARSE_INDEX"), False),
            storage=storage,
            storage_username=get("STORAGE_USERNAME") or None,
            storage_password=get("STORAGE_PASSWORD") or None,
            storage_tls_verify=_bool("STORAGE_TLS_VERIFY", get("STORAGE_TLS_VERIFY"), True),
            read_cache=_bool("READ_CACHE", get("READ_CACHE"), True),
            worker_poll_seconds=_number("WORKER_POLL_SECONDS", get("WORKER_POLL_SECONDS"), 10.0, float, 0.05),
            worker_concurrency=int(_number("WORKER_CONCURRENCY", get("WORKER_CONCURRENCY"), 2, int, 1)),
            tag_concurrency=int(_number("TAG_CONCURRENCY", get("TAG_CONCURRENCY"), 8, int, 1)),
            lease_seconds=int(_number("LEASE_SECONDS", get("LEASE_SECONDS"), 600, int, 1)),
            heartbeat_seconds=_number("HEARTBEAT_SECONDS", get("HEARTBEAT_SECONDS"), 5.0, float, 0.1),
            retry_seconds=_number("RETRY_SECONDS", get("RETRY_SECONDS"), 30.0, float, 0),
            skopeo_path=get("SKOPEO") or "skopeo",
            skopeo_timeout_max=_optional_number("SKOPEO_TIMEOUT_MAX", get("SKOPEO_TIMEOUT_MAX"), float, 0.1),
            history_keep=int(_number("HISTORY_KEEP", get("HISTORY_KEEP"), 50, int, 1)),
            api_workers=int(_number("API_WORKERS", get("API_WORKERS"), 2, int, 1)),
            api_threads=int(_number("API_THREADS", get("API_THREADS"), 2, int, 1)),
            metrics_port=int(_number("METRICS_PORT", get("METRICS_PORT"), 9108, int, 0, 65535)),
            metrics_host=get("METRICS_HOST") or "127.0.0.1",
            worker_replicas=_optional_number("WORKER_REPLICAS", get("WORKER_REPLICAS"), int, 1),
            log_level=_log_level(get("LOG_LEVEL")),
        )
        # Last: a process refused for a bad setting has generated no key (nor its instance folder).
        return settings if secret_key else replace(settings, secret_key=_secret_key(instance_path))
