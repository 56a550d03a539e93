"""``quaymirror serve`` as a real process on the embedded default: it answers, its admin token works,
and SIGTERM stops it within 5 seconds."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Server:
    """A ``quaymirror serve`` process whose output is collected line by line."""

    def __init__(self, instance: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}
        env["QUAYMIRROR_INSTANCE_PATH"] = str(instance)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quaymirror.cli", "serve", "--port", str(self.port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(["--- stdout", *self.stdout, "--- stderr", *self.stderr])

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

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {STOP_TIMEOUT}s after SIGTERM\n{self.output()}")
        for reader in self._readers:
            reader.join(timeout=5)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
