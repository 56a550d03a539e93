"""``quaymirror serve`` as a real process on the embedded default: it answers, its admin token works,
SIGTERM stops it within 5 seconds; it says it listens only once it does, refuses a busy port or a bad
setting at once in one line, logs at QUAYMIRROR_LOG_LEVEL and writes nothing outside its instance folder
and the temp dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.common.ports import free_port
from tests.common.servers import Process, fixed_dns

pytestmark = pytest.mark.integration  # real `quaymirror serve` processes

START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0


def http(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def serve_env(instance: Path, changes: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without QUAYMIRROR_* settings, on ``instance``, with ``changes`` (None: unset)."""
    environment = fixed_dns({k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")})
    environment["QUAYMIRROR_INSTANCE_PATH"] = str(instance)
    for name, value in (changes or {}).items():
        environment.pop(name, None)
        if value is not None:
            environment[name] = value
    return environment


# What alembic says at INFO on every start; quaymirror shows it only at DEBUG.
ALEMBIC_LINES = ("alembic", "setup plugin", "Context impl", "Will assume non-transactional DDL", "Running upgrade")


class Server(Process):
    """A ``quaymirror serve`` process on ``port`` (a free one by default) in its own environment."""

    def __init__(self, instance: Path, *args: str, env: dict[str, str | None] | None = None,
                 cwd: Path | None = None, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), *args], serve_env(instance, env), cwd=cwd)

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}\n{self.output()}"
            try:
                if http(f"{self.base}/healthz") == (200, {"status": "ok"}):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        pytest.fail(f"serve did not answer /healthz within {START_TIMEOUT}s\n{self.output()}")

    def wait_line(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The first stderr line containing ``text``, waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.stderr) if text in line), None)
            if found is not None:
                return found
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}\n{self.output()}"
            time.sleep(0.01)
        pytest.fail(f"serve printed no {text!r} within {timeout}s\n{self.output()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> float:  # type: ignore[override]
        """SIGTERM; the seconds it took to exit (a failure after ``timeout``)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {timeout}s after SIGTERM\n{self.output()}")
        for reader in self._readers:
            reader.join(timeout=5)
        return time.monotonic() - started


def printed_token(server: Server) -> str:
    """The admin token is the stdout line after the "Admin token" announcement."""
    for index, line in enumerate(server.stdout):
        if "Admin token" in line and index + 1 < len(server.stdout):
            return server.stdout[index + 1].strip()
    pytest.fail(f"no admin token printed\n{server.output()}")


@pytest.mark.parametrize("worker", [
    pytest.param(False, id="no-worker"),
    pytest.param(True, id="with-worker"),
])
def test_serve_on_the_embedded_default(worker, tmp_path):
    instance = tmp_path / "instance"
    server = Server(instance, *([] if worker else ["--no-worker"]))
    try:
        server.wait_healthy()
        token = printed_token(server)
        assert token == (instance / "admin-token").read_text().strip()
        assert oct((instance / "admin-token").stat().st_mode & 0o777) == "0o600"
        status, body = http(f"{server.base}/api/v1/user/", token)
        assert status == 200
        assert body["username"] == "admin" and body["super_user"] is True
        status, body = http(f"{server.base}/api/v1/user/")
        assert (status, body["error_type"]) == (401, "invalid_token")
        assert body["type"] == f"{server.base}/api/v1/error/invalid_token"
        status, _body = http(f"{server.base}/api/v1/nothing", token)
        assert status == 404
        # A request line over gunicorn's limit is answered by gunicorn (HTML, as Quay's nginx): documented.
        with pytest.raises(urllib.error.HTTPError) as long_line:
            urllib.request.urlopen(f"{server.base}/api/v1/repository/mirror/health?x={'y' * 5000}", timeout=5)
        assert long_line.value.code == 414
        status, document = http(f"{server.base}/api/v1/discovery", token)
        assert status == 200
        assert all("414" in operation["responses"] for item in document["paths"].values()
                   for method, operation in item.items() if method != "parameters")
        took = server.stop()
        assert took < STOP_TIMEOUT
        assert server.process.returncode == 0, server.output()
        assert (instance / "quaymirror.db").exists() and (instance / "secret_key").exists()
        assert [line for line in server.stderr if "listening on" in line] == \
            [f"quaymirror listening on {server.base}"]
        assert not [line for line in server.stderr if any(text in line for text in ALEMBIC_LINES)], server.output()
    finally:
        server.kill()


def test_second_start_keeps_the_admin_and_prints_no_new_token(tmp_path):
    instance = tmp_path / "instance"
    first = Server(instance, "--no-worker")
    try:
        first.wait_healthy()
        token = printed_token(first)
        first.stop()
    finally:
        first.kill()
    second = Server(instance, "--no-worker")
    try:
        second.wait_healthy()
        assert not any("Admin token" in line for line in second.stdout)
        assert http(f"{second.base}/api/v1/user/", token)[0] == 200
        second.stop()
    finally:
        second.kill()
    said = [line for line in second.stderr if "admin token" in line]
    assert len(said) == 1 and said[0].endswith(f"the admin token of the first start is kept in {instance}/admin-token")
    assert token not in second.output()


def test_listening_is_said_once_the_port_accepts(tmp_path):
    """Port 0: any free port, named by the listening line; connecting the moment it is said succeeds."""
    server = Server(tmp_path / "instance", "--no-worker", port=0)
    try:
        line = server.wait_line("quaymirror listening on ")
        server.base = line.removeprefix("quaymirror listening on ")
        host, port = server.base.removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        server.wait_healthy()
        server.stop()
    finally:
        server.kill()


def test_a_busy_port_fails_at_once_in_one_line(tmp_path):
    instance = tmp_path / "instance"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(port)],
                                env=serve_env(instance), capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"quaymirror: error: 127.0.0.1:{port} is in use (another process listens there); choose another --port"]
    assert result.stdout == ""
    assert took < 2.0  # the bound; gunicorn alone retries for 5 s
    assert not (instance / "quaymirror.db").exists()  # refused before the database was touched


@pytest.mark.parametrize(("name", "raw"), [
    ("TAG_CONCURRENCY", "  "),
    ("SKOPEO", "/nonexistent/skopeo"),
    ("STORAGE", "oci:"),
    ("LOG_LEVEL", "loud"),
])
def test_a_bad_setting_stops_serve_at_start_in_one_line(name, raw, tmp_path):
    result = subprocess.run([sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(free_port())],
                            env=serve_env(tmp_path / "instance", {f"QUAYMIRROR_{name}": raw}),
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"quaymirror: error: QUAYMIRROR_{name} must be ") and line.endswith(repr(raw)), line


@pytest.mark.parametrize("runtime_dir", [False, True], ids=["home", "xdg-runtime-dir"])
def test_serve_writes_nothing_outside_its_instance_and_the_temp_dir(runtime_dir, tmp_path):
    """gunicorn's control socket (~/.gunicorn/gunicorn.ctl, or in $XDG_RUNTIME_DIR) is not opened."""
    home, cwd, runtime, temp = (tmp_path / name for name in ("home", "cwd", "runtime", "temp"))
    for folder in (cwd, runtime, temp):
        folder.mkdir()
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime) if runtime_dir else None, "TMPDIR": str(temp)}
    server = Server(tmp_path / "instance", env=env, cwd=cwd)  # with the worker

    def untouched() -> None:
        assert not home.exists(), list(home.rglob("*"))
        assert (list(cwd.iterdir()), list(runtime.iterdir())) == ([], [])
        assert sorted(path.name for path in tmp_path.iterdir()) == ["cwd", "instance", "runtime", "temp"]

    try:
        server.wait_healthy()
        untouched()  # while it runs: gunicorn removes its control socket as it stops
        server.stop()
        assert server.process.returncode == 0, server.output()
    finally:
        server.kill()
    untouched()


@pytest.mark.parametrize("level", ["WARNING", "DEBUG"])
def test_log_level(level, tmp_path):
    server = Server(tmp_path / "instance", "--no-worker", env={"QUAYMIRROR_LOG_LEVEL": level})
    try:
        server.wait_healthy()
        server.stop()
    finally:
        server.kill()
    assert f"quaymirror listening on {server.base}" in server.stderr  # said whatever the level
    levels = {word for line in server.stderr for word in line.split()[2:3]}
    if level == "WARNING":
        assert not levels & {"INFO", "DEBUG"}, server.output()
    else:
        assert {"INFO", "DEBUG"} <= levels, server.output()
        assert any("Running upgrade" in line for line in server.stderr), server.output()
