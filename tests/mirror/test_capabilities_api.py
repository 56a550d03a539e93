"""``GET /api/v1/registry/capabilities``: anonymous, and it says sparse indexes are on exactly when the feature is."""

from __future__ import annotations

import pytest

URL = "/api/v1/registry/capabilities"


def _body(enabled: bool) -> dict:
    return {"sparse_manifests": {"supported": enabled, "required_architectures": [],
                                 "optional_architectures_allowed": enabled},
            "mirror_architectures": ["amd64", "arm64", "ppc64le", "s390x"]}


@pytest.mark.parametrize("enabled", [False, True])
def test_capabilities_follow_the_sparse_index_feature(app_with, world, enabled):
    client = app_with(feature_sparse_index=enabled).test_client()
    anonymous = client.get(URL)
    assert (anonymous.status_code, anonymous.get_json()) == (200, _body(enabled))
    signed_in = client.get(URL, headers=world.headers("admin"))
    assert (signed_in.status_code, signed_in.get_json()) == (200, _body(enabled))


def test_capabilities_are_in_the_openapi_document(client):
    document = client.get("/api/v1/discovery").get_json()
    operation = document["paths"][URL]["get"]
    assert operation["operationId"] == "getRegistryCapabilities"
    assert "security" not in operation or operation["security"] == []
