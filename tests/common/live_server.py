"""A real ``quaymirror serve --no-worker`` (gunicorn) on a fresh PostgreSQL database, seeded through the CLI.

Module-scoped: each e2e module gets its own database and server, so what one
module's requests do cannot leak into another's assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.common.database import fresh_postgres
from tests.common.ports import free_port
from tests.common.servers import fixed_dns

START_TIMEOUT = 60.0
ALL_SCOPES = ("repo:read", "repo:write", "repo:admin", "repo:create", "user:read", "user:admin", "org:admin",
              "super:user")

USER = "fuzzer"
ORG = "fuzzorg"
ROBOTS = ("fuzzorg+mirrorbot", "fuzzorg+spare", "fuzzer+mine")
MIRROR_REPOS = tuple(f"{ORG}/mirror{i}" for i in range(6)) + (f"{USER}/personal",)
NORMAL_REPOS = (f"{ORG}/plain",)
UPSTREAM = "127.0.0.1:5999/library/busybox"


def http(method: str, url: str, token: str | None = None, body: object = None) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


@dataclass
class LiveServer:
    base: str
    token: str
    database_url: str
    env: dict[str, str]
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(self.output[-200:])


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "quaymirror.cli", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"quaymirror {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def seed(env: dict[str, str]) -> str:
    """Users, an org, robots, repositories in MIRROR state; returns a token of the owner with every scope."""
    _cli(env, "user", "create", USER, "--email", f"{USER}@example.com", "--superuser")
    _cli(env, "user", "create", "bystander", "--email", "bystander@example.com")
    _cli(env, "org", "create", ORG, "--owner", USER)
    for robot in ROBOTS:
        _cli(env, "robot", "create", robot)
    for repo in MIRROR_REPOS:
        _cli(env, "repo", "create", repo, "--state", "MIRROR")
    for repo in NORMAL_REPOS:
        _cli(env, "repo", "create", repo)
    _cli(env, "permission", "grant", "bystander", NORMAL_REPOS[0], "read")
    args = ["token", "create", "--user", USER]
    for scope in ALL_SCOPES:
        args += ["--scope", scope]
    return _cli(env, *args).splitlines()[-1].strip()


def mirror_config(robot: str) -> dict:
    return {
        "is_enabled": True,
        "external_reference": UPSTREAM,
        "external_registry_username": "upstream-user",
        "external_registry_password": "upstream-password",
        "external_registry_config": {"verify_tls": False, "unsigned_images": False, "proxy": {}},
        "sync_interval": 3600,
        "sync_start_date": "2024-01-01T00:00:00Z",
        "robot_username": robot,
        "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["latest", "1.*"]},
        "skopeo_timeout_interval": 300,
        "architecture_filter": [],
    }


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    with fresh_postgres("quaymirror_e2e") as url:
        yield from _serve(url, tmp_path_factory)


def _serve(url: str, tmp_path_factory) -> Iterator[LiveServer]:
    instance = tmp_path_factory.mktemp("e2e-instance")
    env = fixed_dns({k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")})
    env.update({
        "QUAYMIRROR_INSTANCE_PATH": str(instance),
        "QUAYMIRROR_DATABASE_URL": url,
        "QUAYMIRROR_SECRET_KEY": "e2e-secret-key",
        "QUAYMIRROR_SSRF_ALLOWED_HOSTS": "127.0.0.1",
        "QUAYMIRROR_API_WORKERS": "4",
        # The organization mirror stays off: its verify would connect to what a fuzzed configuration names
        # (tests/orgmirror covers it behind a resolver table).
        "QUAYMIRROR_FEATURE_ORG_MIRROR": "false",
    })
    process = None
    try:
        _cli(env, "db", "upgrade")
        token = seed(env)
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port), "--no-worker"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        server = LiveServer(f"http://127.0.0.1:{port}", token, url, env, process)

        def read() -> None:
            for line in process.stdout:
                server.output.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"serve exited with {process.returncode}\n{server.log()}"
            try:
                if http("GET", f"{server.base}/healthz")[0] == 200:
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer within {START_TIMEOUT}s\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def instance_path(server: LiveServer) -> Path:
    return Path(server.env["QUAYMIRROR_INSTANCE_PATH"])
