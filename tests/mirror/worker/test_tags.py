"""Tag rules: Quay's glob union over the upstream tags, in code-point order."""

from __future__ import annotations

from quaymirror.mirror.worker.tags import filter_tags


def test_filter_tags_is_quays_glob_union_in_code_point_order():
    tags = ["latest", "v1.0", "v1.10", "v1.9", "V1.0", "v2.0", "dev-1", "Dev-2", "bad tag", "..x"]
    assert filter_tags(tags, ["v1.*", "latest"]) == ["latest", "v1.0", "v1.10", "v1.9"]
    assert filter_tags(tags, ["[Dd]ev-?"]) == ["Dev-2", "dev-1"]
    assert filter_tags(tags, ["V1.0"]) == ["V1.0"]  # case-sensitive
    assert filter_tags(tags, ["*"]) == sorted(t for t in tags if t not in ("bad tag", "..x"))
    assert filter_tags(tags, ["v1.0", "v1.0", "v1.*"]) == ["v1.0", "v1.10", "v1.9"]
    assert filter_tags(tags, ["[!v]*"]) == ["Dev-2", "V1.0", "dev-1", "latest"]
    assert filter_tags(tags, []) == []
