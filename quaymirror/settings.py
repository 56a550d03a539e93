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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from quaymirror.security.ssrf import NOTHING_ALLOWED, AllowList

PREFIX = "QUAYMIRROR_"


class SettingsError(ValueError):
    """A setting has a value we cannot use; raised at start-up, never per request."""


Parse = Callable[[str, str], Any]  # (variable name, its raw value) -> the setting's value


def _bool(name: str, raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off; blank gives the field's default (see :func:`_read`)."""
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _number(kind: type, minimum: float, maximum: float | None = None) -> Parse:
    """A number in ``[minimum, maximum]``.

    A value that is set but blank is refused rather than taken as the default (or as 0): it is
    almost always a templating mistake, and running with a number nobody chose is worse.
    """

    def parse(name: str, raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
        if not math.isfinite(value):
            raise SettingsError(f"{name} must be a number, not {raw!r}")
        if value < minimum:
            raise SettingsError(f"{name} must be at least {minimum}, not {raw!r}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name} must be at most {maximum}, not {raw!r}")
        return value

    return parse


def _text(name: str, raw: str) -> str | None:
    """Free text; blank gives the field's default (see :func:`_read`)."""
    return raw


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(name: str, raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, not {raw!r}")
    return level


SPARSE_FALLBACKS = ("fail", "filtered")


def _url_scheme(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("http", "https"):
        raise SettingsError(f"{name} must be http or https, not {raw!r}")
    return value


def _sparse_fallback(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in SPARSE_FALLBACKS:
        raise SettingsError(f"{name} must be one of {', '.join(SPARSE_FALLBACKS)}, not {raw!r}")
    return value


@dataclass(frozen=True)
class OciStorage:
    """The embedded default: one OCI image layout per repository, ``<path>/<namespace>/<name>``."""

    path: Path

    def __str__(self) -> str:
        return f"oci:{self.path}"


@dataclass(frozen=True)
class RegistryStorage:
    """A registry the worker pushes to: ``<host>/<namespace>/<name>:<tag>``."""

    host: str

    def __str__(self) -> str:
        return f"docker://{self.host}"


Storage = OciStorage | RegistryStorage


def parse_storage(text: str) -> Storage:
    """``QUAYMIRROR_STORAGE`` as the destination it names, else SettingsError.

    Checked when the settings are read, so ``serve`` refuses a bad destination at start instead of in
    its gunicorn worker, where the embedded mirror worker is built.
    """
    if text.startswith("oci:") and len(text) > 4 and ":" not in text[4:]:
        return OciStorage(Path(text[4:]))
    if text.startswith("docker://") and text[9:].strip("/") and "/" not in text[9:].strip("/"):
        return RegistryStorage(text[9:].strip("/"))
    raise SettingsError(f"{PREFIX}STORAGE must be oci:<dir> (no ':' in it) or docker://<host[:port]>, "
                        f"not {text!r}")


def _storage(name: str, raw: str) -> Storage:
    return parse_storage(raw)


def _list(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _allow_list(name: str, raw: str) -> AllowList:
    """The SSRF allow list; a bad entry stops the start (a typo would otherwise allow nothing, silently)."""
    try:
        return AllowList(_list(raw))
    except ValueError as error:
        raise SettingsError(f"{name}: {error}") from None


def env(parse: Parse, *, variable: str | None = None, blank_is_default: bool = False) -> dict[str, Any]:
    """A field's metadata: read from ``QUAYMIRROR_<VARIABLE>`` (default: the field's name) with ``parse``.

    ``blank_is_default``: an empty value means "not set" (text, booleans, lists), rather than an error.
    """
    return {"env": (parse, variable, blank_is_default)}


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


# Stands for "QUAYMIRROR_STORAGE not given": an OCI layout in the instance folder (see Settings.__post_init__).
_DEFAULT_STORAGE = OciStorage(Path())


@dataclass(frozen=True)
class Settings:
    """Every setting with its one default; ``metadata=env(...)`` says how ``from_env`` reads it."""

    instance_path: Path
    database_url: str
    secret_key: str = field(repr=False)
    ssrf_allowed_hosts: AllowList = field(default=NOTHING_ALLOWED, metadata=env(_allow_list, blank_is_default=True))
    superusers_full_access: bool = field(default=False, metadata=env(_bool, blank_is_default=True))
    feature_sparse_index: bool = field(default=False, metadata=env(_bool, blank_is_default=True))
    # What a docker:// destination gets when it refuses an index whose children are missing (see README).
    sparse_fallback: str = field(default="fail", metadata=env(_sparse_fallback, blank_is_default=True))
    # Organization mirroring's API (Quay's FEATURE_ORG_MIRROR; on by default here, off there).
    feature_org_mirror: bool = field(default=True, metadata=env(_bool, blank_is_default=True))
    # Where mirrored images go; unset: OCI layouts in <instance>/storage.
    storage: Storage = field(default=_DEFAULT_STORAGE, metadata=env(_storage, blank_is_default=True))
    storage_username: str | None = field(default=None, metadata=env(_text, blank_is_default=True))
    storage_password: str | None = field(default=None, repr=False, metadata=env(_text, blank_is_default=True))
    storage_tls_verify: bool = field(default=True, metadata=env(_bool, blank_is_default=True))
    worker_poll_seconds: float = field(default=10.0, metadata=env(_number(float, 0.05)))
    # 4: many small mirrors (an organization's) sync 1.26 x faster than at 2 on 2 cores (benchmarks.org_mirror).
    worker_concurrency: int = field(default=4, metadata=env(_number(int, 1)))
    tag_concurrency: int = field(default=8, metadata=env(_number(int, 1)))
    lease_seconds: int = field(default=600, metadata=env(_number(int, 1)))
    # Each worker renews its heartbeat row this often; the row is stale after heartbeat.STALE_BEATS of these.
    heartbeat_seconds: float = field(default=5.0, metadata=env(_number(float, 0.1)))
    # A failed mirror is retried no sooner than this (Quay: at the next 30 s pass).
    retry_seconds: float = field(default=30.0, metadata=env(_number(float, 0)))
    skopeo_path: str = field(default="skopeo", metadata=env(_text, variable="SKOPEO", blank_is_default=True))
    # Upper bound (seconds) on every skopeo command, below each mirror's skopeo_timeout_interval.
    skopeo_timeout_max: float | None = field(default=None, metadata=env(_number(float, 0.1)))
    # Sync runs kept per repository in the history tables.
    history_keep: int = field(default=50, metadata=env(_number(int, 1)))
    api_workers: int = field(default=2, metadata=env(_number(int, 1)))
    # Threads per gunicorn process: 1-3 gave the best throughput and p99 under 32 keep-alive clients on
    # 2 cores, 4-8 queue requests behind the GIL (benchmarks/api); 2 keeps one slow request (DNS) from
    # holding a process.
    api_threads: int = field(default=2, metadata=env(_number(int, 1)))
    # ``quaymirror worker`` serves Prometheus /metrics here (0: not at all).
    metrics_port: int = field(default=9108, metadata=env(_number(int, 0, 65535)))
    metrics_host: str = field(default="127.0.0.1", metadata=env(_text, blank_is_default=True))
    # Quay's REPO_MIRROR_WORKER_REPLICAS: the worker processes deployed (None: not said). The mirror
    # health is degraded while fewer report in.
    worker_replicas: int | None = field(default=None, metadata=env(_number(int, 1)))
    max_content_length: int = 1024 * 1024
    # GET /mirror answers from a per-process cache while the database is unchanged (quaymirror.readcache).
    read_cache: bool = field(default=True, metadata=env(_bool, blank_is_default=True))
    # Quay's SERVER_HOSTNAME and PREFERRED_URL_SCHEME: how notifications name this service (their
    # ``docker_url`` and ``homepage``).
    server_hostname: str = field(default="localhost:8080", metadata=env(_text, blank_is_default=True))
    preferred_url_scheme: str = field(default="http", metadata=env(_url_scheme, blank_is_default=True))
    # The level of the long-running commands' logs (serve, worker): one of LOG_LEVELS.
    log_level: str = field(default="INFO", metadata=env(_log_level))

    def __post_init__(self) -> None:
        # Callers (tests, benchmarks) may give the textual forms; the settings always hold the parsed ones.
        storage: object = self.storage
        if isinstance(storage, str):
            object.__setattr__(self, "storage", parse_storage(storage))
        elif storage is _DEFAULT_STORAGE:
            object.__setattr__(self, "storage", OciStorage(self.instance_path / "storage"))
        if not isinstance(self.ssrf_allowed_hosts, AllowList):
            object.__setattr__(self, "ssrf_allowed_hosts", AllowList(tuple(self.ssrf_allowed_hosts)))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]  # field names are checked by replace()

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
        """Every ``QUAYMIRROR_*`` variable that is set, parsed by its field's ``env`` metadata; the rest keep
        their defaults. A bad value raises SettingsError naming the variable and the value."""
        env = os.environ if env is None else env
        instance_path = instance_path_from_env(env)
        values: dict[str, Any] = {}
        for item in fields(cls):
            if "env" not in item.metadata:
                continue
            parse, variable, blank_is_default = item.metadata["env"]
            name = PREFIX + (variable or item.name.upper())
            raw = env.get(name)
            if raw is None or (blank_is_default and raw.strip() == ""):
                continue
            values[item.name] = parse(name, raw)
        secret_key = env.get(PREFIX + "SECRET_KEY") or ""  # else generated below, once every setting is good
        settings = cls(instance_path=instance_path, database_url=database_url_from_env(env),
                       secret_key=secret_key, **values)
        # Last: a process refused for a bad setting has generated no key (nor its instance folder).
        return settings if secret_key else replace(settings, secret_key=_secret_key(instance_path))
