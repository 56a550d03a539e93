"""The suite's root: the fixtures of the support package ``tests.common``, and the unit/integration marks.

Every test that uses ``database`` runs once per backend (``tests/common/database.py``). The fixture
modules are plugins, so a test names a fixture and never imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.common.database",
    "tests.common.world",
    "tests.common.authz",
    "tests.common.mirror_api",
    "tests.common.registries",
    "tests.common.worker",
    "tests.common.live_server",
    "tests.common.pgcluster",
]

# Fixtures that need something outside this Python process: a PostgreSQL server, docker-registry, skopeo,
# or a quaymirror server process. A test that uses one, runs on the PostgreSQL backend, or is marked
# ``integration`` by its module (tests that start processes themselves) is an integration test; every other
# one is a unit test: ``pytest -m unit`` runs those alone, on a machine with none of these (CI shows it).
OUTSIDE_FIXTURES = frozenset({
    "postgres_url", "pg_database", "pg_settings",
    "registry", "tls_registry", "auth_registry", "counting_skopeo", "make_worker", "workers", "live_server",
    "process_env",
})
# Whole directories of such tests: the end-to-end tests (real servers) and the support package's own
# (tests/common/test_harness.py: real registries).
OUTSIDE_DIRECTORIES = ("e2e", "common")


# Where the temporary directories go (``tmp_path``, hence every test's SQLite file): memory, when the
# machine has a tmpfs and neither TMPDIR nor PYTEST_DEBUG_TEMPROOT says otherwise. Each SQLite commit
# waits for the disk (fsync); on a machine whose disk is busy (a benchmark, another suite) that doubled
# the unit tier's time. What a passing test wrote is deleted as it ends (``tmp_path_retention_policy``).
MEMORY_TEMPROOT = Path("/dev/shm")


def pytest_configure(config) -> None:
    if ("PYTEST_DEBUG_TEMPROOT" not in os.environ and "TMPDIR" not in os.environ
            and MEMORY_TEMPROOT.is_dir() and os.access(MEMORY_TEMPROOT, os.W_OK | os.X_OK)):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(MEMORY_TEMPROOT)


def pytest_collection_modifyitems(items) -> None:
    root = Path(__file__).parent
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("backend") == "postgresql"
        directory = item.path.relative_to(root).parts[0]
        if (on_postgres or directory in OUTSIDE_DIRECTORIES or OUTSIDE_FIXTURES & set(item.fixturenames)
                or item.get_closest_marker("integration")):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


