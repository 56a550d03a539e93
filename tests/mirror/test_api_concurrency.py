"""Concurrent mirror writes and repository deletion never end in a 5xx (a deadlock used to answer 503)."""

from __future__ import annotations

import threading

import pytest

from tests.common.world import World

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

BODY = {
    "is_enabled": True, "external_reference": "quay.io/redhat/quay", "sync_interval": 5000,
    "sync_start_date": "2020-01-02T06:30:00Z", "robot_username": "devtable+dtrobot",
    "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["latest"]}, "skopeo_timeout_interval": 300,
}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_put_racing_a_repository_delete_never_fails_with_5xx(backend, app, world: World):
    from quaymirror.security import ssrf

    statuses: list[int] = []
    headers = world.headers("admin")
    with ssrf.use_resolver(lambda host: ["93.184.216.34"]):
        for round_ in range(15):
            name = f"race{round_}"
            world.repo(f"devtable/{name}", state="MIRROR")
            client = app.test_client()
            assert client.post(f"/api/v1/repository/devtable/{name}/mirror", json=BODY,
                               headers=headers).status_code == 201
            barrier = threading.Barrier(2)

            def put(name=name, barrier=barrier, round_=round_):
                barrier.wait(5)
                for robot in ("devtable+dtrobot2", "devtable+dtrobot"):
                    statuses.append(app.test_client().put(
                        f"/api/v1/repository/devtable/{name}/mirror",
                        json={"robot_username": robot, "sync_interval": 7000 + round_}, headers=headers).status_code)

            def delete(name=name, barrier=barrier):
                barrier.wait(5)
                statuses.append(app.test_client().delete(f"/api/v1/repository/devtable/{name}",
                                                         headers=headers).status_code)

            threads = [threading.Thread(target=put), threading.Thread(target=delete)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    assert statuses and all(status < 500 for status in statuses), statuses
