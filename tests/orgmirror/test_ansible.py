"""Quay's Ansible module ``quay_organization_mirror`` against quaymirror: exactly its calls, and its own notion
of "changed".

``run_module`` replays what the module (infra.quay_configuration 2.8) sends for its parameters: GET the
organization, GET the mirror (404: none), then POST (create, its defaults filled in), or PUT of the fields
given that differ from GET (after its comparison, with ``external_registry_config`` rebuilt from GET's), or
DELETE for ``state: absent``; ``force_sync`` sends sync-now with ``{}``. It is a transcription of the module's
logic for the test, not the module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

ORG = "sellnsmall"
BASE = f"/api/v1/organization/{ORG}"
# Parameters the module turns into body fields of the same name (the API's name where it differs).
FIELDS = ("external_registry_password", "external_registry_username", "sync_start_date", "sync_interval",
          "skopeo_timeout", "robot_username", "external_registry_url", "external_namespace", "is_enabled",
          "visibility", "repository_filters")
PROXIES = ("http_proxy", "https_proxy", "no_proxy")


@dataclass
class Outcome:
    changed: bool = False
    failed: str | None = None
    skipped: str | None = None
    calls: list[tuple[str, str, Any]] = field(default_factory=list)


def _call(client, headers, outcome: Outcome, method: str, path: str, body: Any = None):
    outcome.calls.append((method, path, body))
    return client.open(path, method=method, json=body, headers=headers)


def run_module(client, headers, state: str = "present", force_sync: bool = False, org: str = ORG,
               **params: Any) -> Outcome:
    outcome = Outcome()
    base = f"/api/v1/organization/{org}"
    if _call(client, headers, outcome, "GET", base).status_code != 200:
        if state != "absent":
            outcome.failed = f"The {org} organization does not exist."
        return outcome
    current = _call(client, headers, outcome, "GET", f"{base}/mirror")
    existing = current.get_json() if current.status_code == 200 else None
    if state == "absent":
        if existing is not None:
            status = _call(client, headers, outcome, "DELETE", f"{base}/mirror").status_code
            outcome.changed = status in (200, 201, 202, 204)
        return outcome
    if existing is None:
        body = {
            "is_enabled": params.get("is_enabled", True),
            "external_registry_type": params["external_registry_type"],
            "external_registry_url": params["external_registry_url"],
            "external_namespace": params["external_namespace"],
            "robot_username": params["robot_username"],
            "visibility": params.get("visibility", "public"),
            "sync_interval": params.get("sync_interval", 86400),
            "sync_start_date": params["sync_start_date"],
            "external_registry_config": {
                "verify_tls": params.get("verify_tls", True),
                "proxy": {key: params.get(key) or None for key in PROXIES},
            },
            "repository_filters": params.get("repository_filters", []),
            "skopeo_timeout": params.get("skopeo_timeout", 300),
            "external_registry_username": params.get("external_registry_username"),
            "external_registry_password": params.get("external_registry_password"),
        }
        response = _call(client, headers, outcome, "POST", f"{base}/mirror", body)
        if response.status_code not in (200, 201, 204):
            outcome.failed = response.get_json()["detail"]
            return outcome
        outcome.changed = True
        if force_sync:
            _sync_now(client, headers, outcome, base)
        return outcome
    new = {key: params[key] for key in FIELDS if params.get(key) is not None}
    config = copy.deepcopy(existing["external_registry_config"])
    if params.get("verify_tls") is not None:
        config["verify_tls"] = params["verify_tls"]
    for key in PROXIES:
        if key in params:
            config.setdefault("proxy", {})[key] = params[key] or None
    if config:
        new["external_registry_config"] = config
    if any(existing.get(key) != value for key, value in new.items()):
        if existing["sync_status"] == "SYNCING":
            outcome.skipped = "cannot update the configuration while a synchronization is in progress"
            return outcome
        response = _call(client, headers, outcome, "PUT", f"{base}/mirror", new)
        if response.status_code not in (200, 201, 204):
            outcome.failed = response.get_json()["detail"]
            return outcome
        outcome.changed = True
    if force_sync and existing["sync_status"] not in ("SYNCING", "SYNC_NOW"):
        _sync_now(client, headers, outcome, base)
    return outcome


def _sync_now(client, headers, outcome: Outcome, base: str) -> None:
    response = _call(client, headers, outcome, "POST", f"{base}/mirror/sync-now", {})
    if response.status_code not in (200, 201, 204):
        outcome.failed = response.get_json()["detail"]
    else:
        outcome.changed = True


PARAMS = {
    "external_registry_type": "quay", "external_registry_url": "https://quay.example.org",
    "external_namespace": "projectquay", "robot_username": f"{ORG}+mirrorbot",
    "repository_filters": ["quay", "clair", "redis"], "sync_interval": 43200,
    "sync_start_date": "2025-01-01T00:00:00Z",
}


@pytest.fixture
def headers(orgs) -> dict[str, str]:
    return orgs.headers("ALL")


def test_create_then_no_change_then_update_then_force_sync_then_delete_twice(client, headers):
    created = run_module(client, headers, **PARAMS)
    assert (created.changed, created.failed) == (True, None)
    assert [(m, p) for m, p, _b in created.calls] == [("GET", BASE), ("GET", f"{BASE}/mirror"),
                                                       ("POST", f"{BASE}/mirror")]
    posted_config = created.calls[-1][2]["external_registry_config"]
    assert client.get(f"{BASE}/mirror", headers=headers).get_json()["external_registry_config"] == posted_config

    again = run_module(client, headers, **PARAMS)
    assert (again.changed, again.failed) == (False, None)
    assert [m for m, _p, _b in again.calls] == ["GET", "GET"]

    updated = run_module(client, headers, **{**PARAMS, "verify_tls": False, "https_proxy": "http://proxy:3128",
                                             "external_registry_username": "bob"})
    assert (updated.changed, updated.failed) == (True, None)
    method, _path, body = updated.calls[-1]
    assert method == "PUT" and body["external_registry_config"] == {
        "verify_tls": False, "proxy": {"http_proxy": None, "https_proxy": "http://proxy:3128", "no_proxy": None}}
    same = run_module(client, headers, **{**PARAMS, "verify_tls": False, "https_proxy": "http://proxy:3128",
                                          "external_registry_username": "bob"})
    assert same.changed is False

    synced = run_module(client, headers, force_sync=True, **{**PARAMS, "verify_tls": False,
                                                              "https_proxy": "http://proxy:3128",
                                                              "external_registry_username": "bob"})
    assert (synced.changed, synced.failed) == (True, None)
    assert synced.calls[-1] == ("POST", f"{BASE}/mirror/sync-now", {})
    assert client.get(f"{BASE}/mirror", headers=headers).get_json()["sync_status"] == "SYNC_NOW"

    deleted = run_module(client, headers, state="absent")
    assert deleted.changed is True and deleted.calls[-1][0] == "DELETE"
    gone = run_module(client, headers, state="absent")
    assert gone.changed is False and [m for m, _p, _b in gone.calls] == ["GET", "GET"]


def test_the_modules_expected_failures(client, headers):
    missing_robot = run_module(client, headers, **{**PARAMS, "robot_username": f"{ORG}+doesnotexist"})
    assert missing_robot.failed == f"Invalid robot account: {ORG}+doesnotexist"
    assert client.get(f"{BASE}/mirror", headers=headers).status_code == 404
    too_long = run_module(client, headers, **{**PARAMS, "skopeo_timeout": 43200})
    assert too_long.failed is not None and too_long.failed.startswith("skopeo_timeout")


def test_no_organization(client, headers):
    assert run_module(client, headers, org="nosuchorg", **PARAMS).failed == "The nosuchorg organization does not exist."
    absent = run_module(client, headers, org="nosuchorg", state="absent")
    assert (absent.changed, absent.failed, len(absent.calls)) == (False, None, 1)
