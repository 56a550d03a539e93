"""The mirror tests' (and the worker's, below) directory fixture: skopeo and docker-registry where a test syncs."""

from __future__ import annotations

import pytest

from tests.common.registries import require_tools

# Fixtures that start registries, run skopeo or start workers that do: a test using one syncs for real.
TOOL_FIXTURES = frozenset({"registry", "auth_registry", "tls_registry", "counting_skopeo", "make_worker", "workers"})


@pytest.fixture(autouse=True)
def _tools(request) -> None:
    """A test that syncs, or a module of real processes, skips where skopeo or docker-registry is missing.

    Only those: a pure test (or one that merely runs on PostgreSQL) never skips for a missing tool.
    """
    module_marks = getattr(request.module, "pytestmark", [])
    in_process_module = any(mark.name == "integration" for mark in
                            (module_marks if isinstance(module_marks, list) else [module_marks]))
    if in_process_module or TOOL_FIXTURES & set(request.fixturenames):
        require_tools("skopeo", "docker-registry")
