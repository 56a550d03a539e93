"""Prometheus metrics: Quay's names and labels plus ours, after real syncs.

The metrics live in the process's default registry, so the assertions compare
values before and after each sync instead of absolute values.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from quaymirror import metrics
from tests.common.images import push_images
from tests.common.registries import require_tools
from tests.common.worker import sync_once


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_after_real_syncs(client, registry, database, mirrors, make_worker, tmp_path, markers):
    require_tools("skopeo", "docker-registry")
    markers.append(registry.host)
    push_images(registry, "up/app", ["a", "b", "c"], workdir=tmp_path / "img")
    ok = mirrors.create("metricsorg/good", f"{registry.host}/up/app", ["*"])
    bad = mirrors.create("metricsorg/bad", "127.0.0.1:9/up/none", ["*"])  # connection refused
    copied0 = _value("quaymirror_mirror_tags_total", namespace="metricsorg", outcome="copied")
    failures0 = _value("quay_repository_mirror_sync_failures_total", namespace="metricsorg", reason="connection_error")
    runs0 = _value("quay_repository_mirror_sync_duration_seconds_count", namespace="metricsorg")
    worker = make_worker()
    assert sync_once(worker) == 2
    assert {mirrors.runs(ok)[-1].status, mirrors.runs(bad)[-1].status} == {"SUCCESS", "FAIL"}

    samples = _scrape(client)

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert sample("quaymirror_mirror_tags_total", namespace="metricsorg", outcome="copied") == copied0 + 3
    assert sample("quaymirror_mirror_bytes_copied_total", namespace="metricsorg") > 0
    assert sample("quay_repository_mirror_last_sync_status", namespace="metricsorg", repository="good",
                  last_error_reason="") == 1
    assert sample("quay_repository_mirror_sync_complete", namespace="metricsorg", repository="good") == 1
    assert sample("quay_repository_mirror_pending_tags", namespace="metricsorg", repository="good") == 0
    assert sample("quay_repository_mirror_last_sync_timestamp", namespace="metricsorg",
                  repository="good") > time.time() - 600
    assert sample("quay_repository_mirror_last_sync_status", namespace="metricsorg", repository="bad",
                  last_error_reason="connection_error") == 0
    assert sample("quay_repository_mirror_sync_complete", namespace="metricsorg", repository="bad") == 0
    assert sample("quay_repository_mirror_sync_failures_total", namespace="metricsorg",
                  reason="connection_error") == failures0 + 1
    assert sample("quay_repository_mirror_sync_duration_seconds_count", namespace="metricsorg") == runs0 + 2
    assert sample("quay_repository_mirror_workers_active") == 1
    assert ("quay_repository_rows_unmirrored", ()) in samples

    # a no-change re-sync counts skipped tags
    skipped0 = _value("quaymirror_mirror_tags_total", namespace="metricsorg", outcome="skipped")
    mirrors.update(bad, is_enabled=False)  # its retry would be due again
    mirrors.update(ok, sync_status=3)
    assert sync_once(worker) == 1
    assert _value("quaymirror_mirror_tags_total", namespace="metricsorg", outcome="skipped") == skipped0 + 3
    worker.shutdown()
    assert _value("quay_repository_mirror_workers_active") == 0


def test_quay_reason_names():
    assert metrics.quay_reason("invalid_source") == "invalid_source_registry"
    assert metrics.quay_reason("timeout") == "network_timeout"
    assert metrics.quay_reason(None) == "unknown_error"
    assert metrics.quay_reason("auth_failed") == "auth_failed"


@pytest.mark.parametrize("port", [0])
def test_worker_metrics_port_zero_serves_nothing(port):
    assert metrics.serve(port) is False


@pytest.mark.integration  # a real `quaymirror worker` process
def test_worker_process_serves_metrics(tmp_path):
    from tests.common.ports import free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "QUAYMIRROR_INSTANCE_PATH": str(tmp_path),
           "QUAYMIRROR_DATABASE_URL": f"sqlite:///{tmp_path / 'q.db'}", "QUAYMIRROR_STORAGE": f"oci:{tmp_path / 's'}",
           "QUAYMIRROR_SECRET_KEY": "x" * 40, "QUAYMIRROR_METRICS_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "quaymirror.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline and "quay_repository_mirror_workers_active 1.0" not in body:
            try:  # the endpoint starts just before the worker: poll until the worker says it runs
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    body = response.read().decode()
            except OSError:
                pass
            time.sleep(0.1)
        assert "quay_repository_mirror_workers_active 1.0" in body, "the worker never served /metrics"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
