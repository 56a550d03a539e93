"""Real processes for the end-to-end tests: ``quaymirror serve`` (gunicorn) and ``quaymirror worker``.

Both run with a clean ``QUAYMIRROR_*`` environment built from keyword
arguments; their stdout/stderr lines are collected (for log-leak checks and
failure messages) and every process is stopped at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.common.ports import free_port

START_TIMEOUT = 60.0


# The DNS of every quaymirror process a test starts: loopback names only (tests.common.fixed_dns).
FIXED_DNS = {"localhost": ["127.0.0.1"]}


def fixed_dns(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the process's DNS fixed to :data:`FIXED_DNS`: no test ever asks the real DNS."""
    site = str(Path(__file__).resolve().parent / "fixed_dns")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p)
    env["TEST_FIXED_DNS"] = json.dumps(FIXED_DNS)
    return env


def quaymirror_env(instance: Path, **settings: object) -> dict[str, str]:
    """The environment of a quaymirror process: ``database_url="..."`` becomes ``QUAYMIRROR_DATABASE_URL``;
    its DNS is fixed (:func:`fixed_dns`)."""
    env = fixed_dns({k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")})
    env["QUAYMIRROR_INSTANCE_PATH"] = str(instance)
    for key, value in settings.items():
        env["QUAYMIRROR_" + key.upper()] = str(value)
    return env


class Process:
    """A quaymirror subprocess whose output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = args
        self.process = subprocess.Popen([sys.executable, "-m", "quaymirror.cli", *args], env=env, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self.stdout), daemon=True),
                         threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True)]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def lines(self) -> list[str]:
        return [*self.stdout, *self.stderr]

    def output(self, tail: int = 200) -> str:
        return "\n".join([f"--- {' '.join(self.args[:1])} stdout", *self.stdout[-tail:],
                          "--- stderr", *self.stderr[-tail:]])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait; SIGKILL the process group if it does not exit. The exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # leftovers (gunicorn workers, skopeo)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.process.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class Server(Process):
    """``quaymirror serve [--no-worker]`` on a free loopback port."""

    def __init__(self, instance: Path, *args: str, **settings: object) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), *args], quaymirror_env(instance, **settings))

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"serve exited with {self.process.returncode}\n{self.output()}")
            with contextlib.suppress(OSError, ValueError):
                if request(self.port, "GET", "/healthz")[0] == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"serve did not answer /healthz within {timeout}s\n{self.output()}")


class WorkerProcess(Process):
    """``quaymirror worker``."""

    def __init__(self, instance: Path, **settings: object) -> None:
        super().__init__(["worker"], quaymirror_env(instance, **settings))


def request(port: int, method: str, path: str, token: str | None = None, body: object = None,
            raw: bytes | None = None, timeout: float = 30.0) -> tuple[int, object, dict[str, str]]:
    """One request on a fresh connection: (status, parsed JSON or text, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        return send(conn, method, path, token, body, raw)
    finally:
        conn.close()


def send(conn: http.client.HTTPConnection, method: str, path: str, token: str | None = None,
         body: object = None, raw: bytes | None = None) -> tuple[int, object, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    response_headers = {k.lower(): v for k, v in response.getheaders()}
    try:
        parsed: object = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode("utf-8", "replace")
    return response.status, parsed, response_headers
