"""Bodies of the organization mirror API tests, shared by their modules."""

from __future__ import annotations

from typing import Any


def org_mirror_body(**overrides: Any) -> dict[str, Any]:
    """A minimal valid POST for sellnsmall."""
    body: dict[str, Any] = {
        "external_registry_type": "harbor",
        "external_registry_url": "https://harbor.example.com",
        "external_namespace": "my-project",
        "robot_username": "sellnsmall+mirrorbot",
        "visibility": "private",
        "sync_interval": 3600,
        "sync_start_date": "2025-01-01T00:00:00Z",
    }
    body.update(overrides)
    return body
