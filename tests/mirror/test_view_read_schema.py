"""GET /mirror's fast dump and the ViewMirrorConfig schema (the documented contract) give the same body."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from quaymirror.mirror.schemas import ViewMirrorConfig, dump_view

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

BASE = {
    "is_enabled": True, "mirror_type": "PULL", "external_reference": "quay.io/coreos/etcd",
    "external_registry_username": None, "external_registry_config": {}, "sync_interval": 86400,
    "sync_start_date": datetime(2026, 1, 2, 3, 4, 5, 678901), "sync_expiration_date": None,
    "sync_retries_remaining": 3, "sync_status": "NEVER_RUN",
    "root_rule": {"rule_kind": "tag_glob_csv", "rule_value": ["v3.*", "latest"]},
    "robot_username": "devtable+mirror", "skopeo_timeout_interval": 300, "architecture_filter": [],
}


@pytest.mark.parametrize("changes", [
    {},
    {"sync_start_date": None, "architecture_filter": None},
    {"sync_expiration_date": datetime(2026, 12, 31, 23, 59, 59), "sync_status": "SYNCING",
     "external_registry_username": "alice", "robot_username": None,
     "external_registry_config": {"verify_tls": False, "unsigned_images": True, "proxy": {"https_proxy": "p"}},
     "architecture_filter": ["amd64", "arm64"]},
])
def test_dump_view_is_the_schema_dump(changes):
    values = {**BASE, **changes}
    fast, schema = dump_view(values), ViewMirrorConfig().dump(values)
    assert fast == schema
    assert list(fast) == list(schema)  # Quay's key order
    assert json.dumps(fast) == json.dumps(schema)
    assert fast["sync_start_date"] in (None, "2026-01-02T03:04:05Z")
