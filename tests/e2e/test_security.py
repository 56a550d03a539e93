"""Security end to end: secrets never in plaintext, SSRF through the API and in the worker, input limits.

Complements tests/e2e/test_authz_server.py (the authorization matrix of every endpoint, against
gunicorn), tests/security/test_ssrf.py (unit table), tests/mirror/worker/test_run_failures.py (wrong-password
leaks) and tests/test_errors.py (413 on the foundation endpoints).
"""

from __future__ import annotations

import http.client
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from quaymirror.db import Database
from quaymirror.mirror.models import MirrorSyncRun, RepoMirrorStatus
from quaymirror.security import ssrf
from tests.common.database import PG_ADMIN_URL, TEST_SECRET, truncate_all
from tests.common.images import push_images
from tests.common.mirror_api import PUBLIC_ADDRESS, post_body
from tests.common.mirrors import Mirrors, ProcSampler
from tests.common.ports import wait_for
from tests.common.registries import AUTH_USERNAME, require_tools
from tests.common.servers import Server, WorkerProcess, send
from tests.common.world import World

NOT_ALLOWED = "The provided registry location is not allowed"
PUBLIC = PUBLIC_ADDRESS
DNS = {"quay.io": [PUBLIC], "registry.example.com": [PUBLIC], "private.example.com": ["10.1.2.3"],
       "v6private.example.com": ["fd00::1"], "loop.example.com": ["127.0.0.1"],
       "linklocal.example.com": ["169.254.169.254"], "mapped.example.com": ["::ffff:10.0.0.1"]}


@pytest.fixture(autouse=True)
def _dns():
    with ssrf.use_resolver(DNS):
        yield


# ---------------------------------------------------------------------------------- SSRF via API

SSRF_REFERENCES = [
    "[::1]/team/repo", "[::1]:5000/team/repo", "[::ffff:127.0.0.1]/team/repo", "[::ffff:7f00:1]/team/repo",
    "[fe80::1]/team/repo", "[fd00::1]/team/repo", "[::]/team/repo", "[::ffff:169.254.169.254]/a/b",
    "2130706433/team/repo", "0177.0.0.1/team/repo", "0x7f.0.0.1/team/repo", "0x7f000001/team/repo",
    "017700000001/team/repo", "127.1/team/repo", "0/team/repo", "0.0.0.0/team/repo", "167772161/team/repo",
    "0xa9fea9fe/latest/meta-data", "private.example.com/team/repo", "v6private.example.com/team/repo",
    "loop.example.com:5000/team/repo", "linklocal.example.com/a/b", "mapped.example.com/a/b",
]


@pytest.mark.parametrize("reference", SSRF_REFERENCES)
def test_ssrf_forms_are_refused_through_the_api(reference, world, client, database):
    world.repo("devtable/ssrf", state="MIRROR")
    path = "/api/v1/repository/devtable/ssrf/mirror"
    response = client.post(path, json=post_body("devtable+dtrobot", reference), headers=world.headers("admin"))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["detail"] == NOT_ALLOWED
    # PUT on an existing config refuses the same way and changes nothing.
    assert client.post(path, json=post_body("devtable+dtrobot"), headers=world.headers("admin")).status_code == 201
    response = client.put(path, json={"external_reference": reference}, headers=world.headers("admin"))
    assert (response.status_code, response.get_json()["detail"]) == (400, NOT_ALLOWED)
    assert client.get(path, headers=world.headers("admin")).get_json()["external_reference"] == "quay.io/a/b"


def test_worker_rechecks_the_reference_before_each_run(database, settings, tmp_path):
    """A name that was public at PUT time and now resolves privately: invalid_source, no skopeo."""
    from quaymirror.mirror.worker.runner import Worker

    mirrors = Mirrors(database, TEST_SECRET)
    config_id = mirrors.create("devtable/rebind", "registry.example.com/team/repo")
    fake_skopeo = tmp_path / "skopeo"
    ran = tmp_path / "skopeo-ran"
    fake_skopeo.write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexit 1\n")
    fake_skopeo.chmod(0o755)
    worker = Worker(settings.with_overrides(skopeo_path=str(fake_skopeo), retry_seconds=0), database)
    worker.start(poll=False)
    try:
        with ssrf.use_resolver({**DNS, "registry.example.com": ["10.9.8.7"]}):
            worker.run_pass()
            assert worker.wait_idle(30)
    finally:
        worker.shutdown(timeout=10)
    runs = mirrors.runs(config_id)
    assert [(run.status, run.reason) for run in runs][-1:] == [("FAIL", "invalid_source")], \
        [(r.status, r.reason, r.message) for r in runs]
    assert not ran.exists(), ran.read_text()
    assert mirrors.config(config_id).sync_status == RepoMirrorStatus.FAIL


# ---------------------------------------------------------------------------------- input limits

OVERSIZE = [
    ("external_registry_username", "u" * 4097),
    ("external_registry_password", "p" * 9001),
    ("external_reference", "quay.io/" + "a" * 10000),
    ("robot_username", "devtable+" + "r" * 300),
    ("root_rule", {"rule_kind": "tag_glob_csv", "rule_value": ["x" * 70000]}),
    ("external_registry_config", {"verify_tls": True, "proxy": {"https_proxy": "http://p/" + "x" * 70000}}),
]


@pytest.mark.parametrize("field, value", OVERSIZE, ids=[f for f, _ in OVERSIZE])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_strings_over_the_column_sizes_are_400_before_the_database(method, field, value, world, client,
                                                                    database):
    world.repo("devtable/limits", state="MIRROR")
    path = "/api/v1/repository/devtable/limits/mirror"
    admin = world.headers("admin")
    if method == "PUT":
        assert client.post(path, json=post_body("devtable+dtrobot"), headers=admin).status_code == 201
        body = {field: value}
    else:
        body = post_body("devtable+dtrobot", **{field: value})
    before = client.get(path, headers=admin).get_json()
    response = client.open(path, method=method, json=body, headers=admin)
    payload = response.get_json()
    assert response.status_code == 400, payload
    # A message of the validation layer (naming the field), not the database's "out of range or too long".
    assert "out of range or too long" not in payload["detail"], payload
    assert client.get(path, headers=admin).get_json() == before


# -------------------------------------------------------------------- real server: 413 and secrets


def _mirror_paths(namespace: str, name: str) -> list[tuple[str, str]]:
    base = f"/api/v1/repository/{namespace}/{name}/mirror"
    return [("POST", base), ("PUT", base), ("DELETE", base), ("GET", base), ("POST", base + "/sync-now"),
            ("POST", base + "/sync-cancel"), ("GET", base + "/syncs")]


def _dump(database_url: str, instance: Path) -> bytes:
    if database_url.startswith("sqlite"):
        path = Path(database_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    name = database_url.rsplit("/", 1)[1]
    base = PG_ADMIN_URL.split("@", 1)[1].split("/", 1)[0]
    host, port = base.split(":")
    return subprocess.run(["pg_dump", "-h", host, "-p", port, "-U", "postgres", name], check=True,
                          capture_output=True, timeout=60).stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_secrets_never_in_plaintext(backend, database_url, auth_registry, tmp_path):
    require_tools("skopeo", "docker-registry")
    if backend == "postgresql":
        truncate_all(database_url)
    secret = f"Pw-{uuid.uuid4().hex}"
    auth_registry.set_password(AUTH_USERNAME, secret)
    auth_registry.password = secret  # the harness pushes with the registry's credentials
    push_images(auth_registry, "lib/app", ["t1", "t2"], workdir=tmp_path / "images")

    database = Database(database_url)
    world = World(database, TEST_SECRET)
    world.user("sec")
    robot_token = world.robot("sec+mirror")
    world.repo("sec/app", state="MIRROR")
    world.repo("sec/big", state="MIRROR")
    token = world.token("owner", "sec", "repo:admin")
    database.dispose()

    instance = tmp_path / "instance"
    settings = {"database_url": database_url, "secret_key": TEST_SECRET, "ssrf_allowed_hosts": "127.0.0.1/32",
                "storage": f"oci:{tmp_path / 'storage'}", "worker_poll_seconds": 0.2, "retry_seconds": 0}
    server = Server(instance, "--no-worker", **settings)
    worker = None
    responses: list[bytes] = []
    try:
        server.wait_healthy()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

        # 413 JSON on every mirror endpoint of the real server, before anything is created.
        big = b"{" + b" " * (1024 * 1024 + 1) + b"}"
        for method, path in _mirror_paths("sec", "big"):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            status, payload, headers = send(conn, method, path, token, raw=big)
            assert status == 413, (method, path, status, payload)
            assert headers["content-type"].startswith("application/"), headers
            assert payload["error_type"] == "request_too_large", payload
            conn.close()

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        body = post_body("sec+mirror", f"{auth_registry.host}/lib/app", external_registry_username=AUTH_USERNAME,
                         external_registry_password=secret,
                         sync_start_date=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         external_registry_config={"verify_tls": False})
        status, payload, _ = send(conn, "POST", "/api/v1/repository/sec/app/mirror", token, body)
        assert status == 201, payload
        with ProcSampler(auth_registry.host) as sampler:
            worker = WorkerProcess(instance, **settings)

            def finished():
                s, p, _ = send(conn, "GET", "/api/v1/repository/sec/app/mirror/syncs", token)
                responses.append(repr(p).encode())
                runs = p["syncs"] if s == 200 else []
                return runs and not runs[0]["in_progress"] and runs[0]

            run = wait_for(finished, 90, 0.3, "the first sync")
        assert run["status"] == "SUCCESS", run
        assert sampler.samples, "skopeo was never seen running"
        for method, path in [("GET", "/api/v1/repository/sec/app/mirror"),
                             ("GET", f"/api/v1/repository/sec/app/mirror/syncs/{run['id']}"),
                             ("PUT", "/api/v1/repository/sec/app/mirror"),
                             ("POST", "/api/v1/repository/sec/app/mirror/sync-now")]:
            status, payload, headers = send(conn, method, path, token, {"sync_interval": 4000}
                                            if method == "PUT" else None)
            assert status < 500, (path, status, payload)
            responses.append(repr(payload).encode() + repr(headers).encode())
        conn.close()
        worker.stop()
        server.stop()

        needle = secret.encode()
        for argv, environ in sampler.samples:
            assert secret not in " ".join(argv), argv
            assert needle not in environ
        assert all(needle not in r for r in responses)
        for process in (server, worker):
            leaked = [line for line in process.lines() if secret in line]
            assert not leaked, leaked
        dump = _dump(database_url, instance)
        assert needle not in dump, "password in plaintext in the database"
        assert token.encode() not in dump and robot_token.encode() not in dump, "raw token stored"
        database = Database(database_url)
        with database.transaction() as session:
            assert session.scalars(select(MirrorSyncRun)).first() is not None
        database.dispose()
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
