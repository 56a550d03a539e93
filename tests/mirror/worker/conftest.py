"""The worker tests' fixtures (``tests/worker/conftest.py``), for the worker tests kept under ``tests/mirror/``."""

from tests.worker.conftest import (  # noqa: F401  (fixtures, found by pytest under these names)
    _tools,
    auth_registry,
    counting_skopeo,
    make_worker,
    markers,
    mirrors,
    registry,
    workers,
    wsettings,
)
