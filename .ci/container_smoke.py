"""Container smoke test: the image built from our Dockerfile serves, mirrors, and stops cleanly.

Run by .ci/containers after the build. Drives the container's API with curl from the host,
mirrors from a registry on the host's loopback into the container's OCI layout, checks the digests,
and removes everything it started whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.common.images import push_images
from tests.common.ports import free_port, wait_for
from tests.common.registry import Registry

IMAGE = os.environ.get("APP_TAG", "localhost/quaymirror:ci")


def run(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])}... failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result.stdout


def curl(method: str, url: str, token: str | None = None, body: object | None = None) -> tuple[int, str]:
    args = ["curl", "-sS", "-m", "20", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    out = run(*args)
    text, _, code = out.rpartition("\n")
    return int(code), text


def main() -> int:
    name = f"qm-smoke-{os.getpid()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp, Registry(Path(tmp) / "upstream") as upstream:
        digests = push_images(upstream, "upstream/app", ["v1", "v2", "latest"], workdir=Path(tmp) / "img")
        try:
            run("podman", "run", "-d", "--name", name, "--network", "host",
                "-e", "QUAYMIRROR_SSRF_ALLOWED_HOSTS=127.0.0.1",
                "-e", "QUAYMIRROR_WORKER_POLL_SECONDS=2",
                IMAGE, "serve", "--host", "127.0.0.1", "--port", str(port))

            def healthy() -> bool:
                try:
                    return curl("GET", f"{base}/healthz")[0] == 200
                except RuntimeError:
                    return False

            wait_for(healthy, 60, interval=0.25, what="/healthz")
            run("podman", "exec", name, "quaymirror", "user", "create", "alice")
            token = run("podman", "exec", name, "quaymirror", "token", "create", "--user", "alice",
                        "--scope", "repo:admin", "--scope", "repo:create", "--scope", "user:admin").strip()
            run("podman", "exec", name, "quaymirror", "robot", "create", "alice+mirror")

            status, text = curl("GET", f"{base}/api/v1/user/", token)
            assert status == 200 and json.loads(text)["username"] == "alice", (status, text)
            status, text = curl("POST", f"{base}/api/v1/repository", token, {
                "namespace": "alice", "repository": "app", "visibility": "private",
                "description": "", "repo_kind": "image"})
            assert status == 201, (status, text)
            status, text = curl("PUT", f"{base}/api/v1/repository/alice/app/changestate", token, {"state": "MIRROR"})
            assert status == 200, (status, text)
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            status, text = curl("POST", f"{base}/api/v1/repository/alice/app/mirror", token, {
                "is_enabled": True, "external_reference": f"{upstream.host}/upstream/app",
                "external_registry_config": {"verify_tls": False}, "robot_username": "alice+mirror",
                "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v*"]},
                "sync_interval": 86400, "sync_start_date": now, "skopeo_timeout_interval": 300})
            assert status == 201, (status, text)
            status, text = curl("POST", f"{base}/api/v1/repository/alice/app/mirror/sync-now", token)
            assert status == 204, (status, text)

            def synced() -> bool:
                code, body = curl("GET", f"{base}/api/v1/repository/alice/app/mirror", token)
                state = json.loads(body).get("sync_status") if code == 200 else None
                if state == "FAIL":
                    history = curl("GET", f"{base}/api/v1/repository/alice/app/mirror/syncs", token)[1]
                    logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True, timeout=60,
                                          check=False)
                    raise RuntimeError(f"sync failed: {body}\nhistory: {history[:3000]}\n"
                                       f"{(logs.stdout + logs.stderr)[-4000:]}")
                return state == "SUCCESS"

            wait_for(synced, 120, interval=0.25, what="the mirror to reach SUCCESS")
            for tag in ("v1", "v2"):
                raw = subprocess.run(["podman", "exec", name, "skopeo", "inspect", "--raw",
                                      f"oci:/data/storage/alice/app:{tag}"], capture_output=True, timeout=60,
                                     check=True).stdout
                landed = "sha256:" + hashlib.sha256(raw).hexdigest()
                assert landed == digests[tag], (tag, landed, digests[tag])
            missing = subprocess.run(["podman", "exec", name, "skopeo", "inspect", "--raw",
                                      "oci:/data/storage/alice/app:latest"], capture_output=True, timeout=60,
                                     check=False)
            assert missing.returncode != 0, "latest does not match v* and must not be mirrored"
            print(f"container smoke: v1 and v2 mirrored with identical digests into {IMAGE}'s OCI layout")

            started = time.monotonic()
            run("podman", "stop", "-t", "10", name)
            took = time.monotonic() - started
            assert took < 5, f"SIGTERM took {took:.1f}s"
            print(f"container smoke: SIGTERM stop took {took:.2f}s")
        finally:
            subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=60, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
