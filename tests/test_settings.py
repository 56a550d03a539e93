"""Settings from QUAYMIRROR_* variables, with an embedded default that needs nothing."""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from quaymirror.security.ssrf import AllowList
from quaymirror.settings import (
    PREFIX,
    OciStorage,
    RegistryStorage,
    Settings,
    SettingsError,
    database_url_from_env,
    instance_path_from_env,
)


def test_embedded_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.instance_path == tmp_path / "instance"
    assert settings.database_url == f"sqlite:///{tmp_path / 'instance' / 'quaymirror.db'}"
    assert settings.is_sqlite
    assert settings.storage == OciStorage(tmp_path / 'instance' / 'storage')
    assert settings.ssrf_allowed_hosts == ()
    assert settings.superusers_full_access is False
    assert settings.max_content_length == 1024 * 1024
    assert (settings.api_workers, settings.api_threads) == (2, 2)
    # the measured defaults for 2 cores (README, Tuning): the environment's default and the dataclass's agree
    assert (settings.worker_concurrency, settings.tag_concurrency) == (4, 8)
    assert (Settings.worker_concurrency, Settings.tag_concurrency) == (4, 8)
    key_file = tmp_path / "instance" / "secret_key"
    assert settings.secret_key == key_file.read_text().strip()
    assert len(settings.secret_key) >= 32


def test_secret_key_is_private_and_stable(tmp_path):
    env = {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "inst")}
    first = Settings.from_env(env).secret_key
    mode = stat.S_IMODE(os.stat(tmp_path / "inst" / "secret_key").st_mode)
    assert mode == 0o600
    assert Settings.from_env(env).secret_key == first
    assert [p.name for p in (tmp_path / "inst").iterdir()] == ["secret_key"]  # no temp file left behind


def test_secret_key_created_once_by_racing_processes(tmp_path):
    """Replicas starting together on one volume must agree on one key."""
    env = {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "inst")}
    keys: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        try:
            keys.append(Settings.from_env(env).secret_key)
        except BaseException as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(keys)) == 1
    assert keys[0] == (tmp_path / "inst" / "secret_key").read_text().strip()


def test_empty_secret_key_file_is_an_error(tmp_path):
    (tmp_path / "secret_key").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        Settings.from_env({"QUAYMIRROR_INSTANCE_PATH": str(tmp_path)})


def test_explicit_secret_key_writes_nothing(tmp_path):
    settings = Settings.from_env({"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "inst"),
                                  "QUAYMIRROR_SECRET_KEY": "given"})
    assert settings.secret_key == "given"
    assert not (tmp_path / "inst").exists()


def test_every_documented_setting(tmp_path):
    settings = Settings.from_env({
        "QUAYMIRROR_INSTANCE_PATH": str(tmp_path),
        "QUAYMIRROR_DATABASE_URL": "postgresql+psycopg2://u:p@db/quay",
        "QUAYMIRROR_SECRET_KEY": "s3cret",
        "QUAYMIRROR_SSRF_ALLOWED_HOSTS": " registry.internal , 10.0.0.0/8,,",
        "QUAYMIRROR_SUPERUSERS_FULL_ACCESS": "true",
        "QUAYMIRROR_READ_CACHE": "off",
    })
    assert settings.database_url == "postgresql+psycopg2://u:p@db/quay"
    assert not settings.is_sqlite
    assert settings.secret_key == "s3cret"
    assert settings.ssrf_allowed_hosts == ("registry.internal", "10.0.0.0/8")
    assert settings.superusers_full_access is True
    assert settings.read_cache is False


@pytest.mark.parametrize(("raw", "value"), [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_boolean_values(raw, value, tmp_path):
    env = {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k",
           "QUAYMIRROR_SUPERUSERS_FULL_ACCESS": raw}
    assert Settings.from_env(env).superusers_full_access is value


@pytest.mark.parametrize(("name", "raw"), [
    ("SUPERUSERS_FULL_ACCESS", "maybe"),
    ("READ_CACHE", "sometimes"),
    ("STORAGE", "s3://bucket"),
    ("API_WORKERS", "zero"),
    ("API_WORKERS", "0"),
    ("API_THREADS", "0"),
    ("API_THREADS", "many"),
])
def test_unusable_values_are_refused_at_start(name, raw, tmp_path):
    env = {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k", f"QUAYMIRROR_{name}": raw}
    with pytest.raises(SettingsError, match=f"QUAYMIRROR_{name}"):
        Settings.from_env(env)


def test_settings_are_immutable_but_overridable(tmp_path):
    settings = Settings.from_env({"QUAYMIRROR_INSTANCE_PATH": str(tmp_path), "QUAYMIRROR_SECRET_KEY": "k"})
    with pytest.raises(AttributeError):
        settings.superusers_full_access = True  # type: ignore[misc]
    assert settings.with_overrides(superusers_full_access=True).superusers_full_access is True
    assert settings.superusers_full_access is False


def test_database_url_alone_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert database_url_from_env({}) == f"sqlite:///{tmp_path / 'instance' / 'quaymirror.db'}"
    assert instance_path_from_env({"QUAYMIRROR_INSTANCE_PATH": "rel"}) == tmp_path / "rel"
    assert database_url_from_env({"QUAYMIRROR_DATABASE_URL": "sqlite:////x.db"}) == "sqlite:////x.db"
    assert list(Path(tmp_path).iterdir()) == []


def test_reads_the_process_environment_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("QUAYMIRROR_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("QUAYMIRROR_SECRET_KEY", "from-env")
    monkeypatch.setenv("QUAYMIRROR_SUPERUSERS_FULL_ACCESS", "on")
    settings = Settings.from_env()
    assert settings.instance_path == tmp_path
    assert settings.secret_key == "from-env"
    assert settings.superusers_full_access is True


def _env(tmp_path, **values: str) -> dict[str, str]:
    return {"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "inst"), "QUAYMIRROR_SECRET_KEY": "k",
            **{f"QUAYMIRROR_{name}": value for name, value in values.items()}}


@pytest.mark.parametrize(("name", "raw"), [
    ("SKOPEO_TIMEOUT_MAX", "  "),  # parsed as 0.0 (no bound) before
    ("SKOPEO_TIMEOUT_MAX", ""),
    ("SKOPEO_TIMEOUT_MAX", "soon"),
    ("SKOPEO_TIMEOUT_MAX", "0"),
    ("TAG_CONCURRENCY", " "),  # taken as the default before
    ("WORKER_CONCURRENCY", ""),
    ("WORKER_POLL_SECONDS", "nan"),
    ("RETRY_SECONDS", "inf"),
    ("LEASE_SECONDS", "1.5"),
    ("HISTORY_KEEP", "-3"),
    ("METRICS_PORT", "65536"),
    ("METRICS_PORT", "port"),
    ("STORAGE", "oci:"),
    ("STORAGE", "oci:/a:b"),
    ("STORAGE", "docker://host/path"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", ""),
    ("SPARSE_FALLBACK", "ignore"),
])
def test_a_bad_value_is_refused_naming_the_variable_and_the_value(name, raw, tmp_path):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(_env(tmp_path, **{name: raw}))
    message = str(refused.value)
    assert message.startswith(f"QUAYMIRROR_{name} must be ") and message.endswith(repr(raw)), message
    assert "\n" not in message


def test_a_refused_setting_creates_nothing(tmp_path):
    """The secret key (and with it the instance folder) is generated only once every setting is good."""
    env = _env(tmp_path, TAG_CONCURRENCY="many")
    del env["QUAYMIRROR_SECRET_KEY"]
    with pytest.raises(SettingsError, match="QUAYMIRROR_TAG_CONCURRENCY"):
        Settings.from_env(env)
    assert not (tmp_path / "inst").exists()


@pytest.mark.parametrize(("raw", "level"), [(None, "INFO"), ("debug", "DEBUG"), (" Warning ", "WARNING"),
                                            ("ERROR", "ERROR"), ("info", "INFO")])
def test_log_level(raw, level, tmp_path):
    env = _env(tmp_path) if raw is None else _env(tmp_path, LOG_LEVEL=raw)
    assert Settings.from_env(env).log_level == level


def test_numbers_in_range_are_read(tmp_path):
    settings = Settings.from_env(_env(tmp_path, SKOPEO_TIMEOUT_MAX=" 2.5 ", METRICS_PORT="65535",
                                      TAG_CONCURRENCY="3", STORAGE="docker://127.0.0.1:5000"))
    assert (settings.skopeo_timeout_max, settings.metrics_port, settings.tag_concurrency) == (2.5, 65535, 3)
    assert settings.storage == RegistryStorage("127.0.0.1:5000") and str(settings.storage) == "docker://127.0.0.1:5000"
    assert Settings.from_env(_env(tmp_path)).skopeo_timeout_max is None


def test_skopeo_resolved_to_the_executable_it_names(tmp_path, monkeypatch):
    tool = tmp_path / "bin" / "my-skopeo"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    settings = Settings.from_env(_env(tmp_path))
    monkeypatch.setenv("PATH", str(tool.parent))
    assert settings.with_overrides(skopeo_path="my-skopeo").with_skopeo_resolved().skopeo_path == str(tool)
    monkeypatch.chdir(tmp_path)  # a relative path becomes absolute: skopeo runs in a run directory
    assert settings.with_overrides(skopeo_path="bin/my-skopeo").with_skopeo_resolved().skopeo_path == str(tool)


def test_skopeo_that_is_not_an_executable_is_refused(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    monkeypatch.setenv("PATH", str(tmp_path))
    settings = Settings.from_env(_env(tmp_path))
    for path in ["skopeo", "no-such-skopeo", str(plain), str(tmp_path), str(tmp_path / "missing")]:
        with pytest.raises(SettingsError) as refused:
            settings.with_overrides(skopeo_path=path).with_skopeo_resolved()
        assert str(refused.value) == (f"QUAYMIRROR_SKOPEO must be an executable (a path, or a name on PATH), "
                                      f"not {path!r}")


def test_every_setting_read_from_the_environment_is_in_the_readme_table():
    """One definition per setting (the dataclass field and its ``env`` metadata); the README documents each."""
    table = {line.split("|")[1].strip() for line in Path("README.md").read_text().splitlines()
             if line.startswith("| `QUAYMIRROR_")}
    documented = {name.strip("`") for row in table for name in row.split(", ")}
    variables = {PREFIX + (item.metadata["env"][1] or item.name.upper())
                 for item in fields(Settings) if "env" in item.metadata}
    assert variables - documented == set()


def test_textual_forms_given_to_the_constructor_are_parsed(tmp_path):
    """Tests and benchmarks build Settings by hand: a storage string and a tuple allow list still end up typed."""
    settings = Settings(instance_path=tmp_path, database_url="sqlite://", secret_key="k",
                        storage=f"oci:{tmp_path}/s", ssrf_allowed_hosts=("127.0.0.1/32",))
    assert settings.storage == OciStorage(tmp_path / "s")
    assert isinstance(settings.ssrf_allowed_hosts, AllowList) and tuple(settings.ssrf_allowed_hosts) == ("127.0.0.1/32",)
    assert Settings(instance_path=tmp_path, database_url="sqlite://", secret_key="k").storage == \
        OciStorage(tmp_path / "storage")
    with pytest.raises(SettingsError):
        Settings(instance_path=tmp_path, database_url="sqlite://", secret_key="k", storage="s3://bucket")


@pytest.mark.parametrize(("raw", "fallback"), [(None, "fail"), ("", "fail"), ("Filtered", "filtered"),
                                               (" fail ", "fail")])
def test_sparse_fallback(raw, fallback, tmp_path):
    env = _env(tmp_path) if raw is None else _env(tmp_path, SPARSE_FALLBACK=raw)
    assert Settings.from_env(env).sparse_fallback == fallback
