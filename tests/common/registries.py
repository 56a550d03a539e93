"""Registry fixtures (a plugin of the root conftest): real registries, function-scoped, stopped on teardown.

A test names ``registry``, ``auth_registry`` or ``tls_registry`` among its arguments; it never imports them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.common.registry import REGISTRY_BIN, Registry

__all__ = ["AUTH_PASSWORD", "AUTH_USERNAME", "auth_registry", "registry", "require_tools", "tls_registry"]

AUTH_USERNAME = "testuser"
AUTH_PASSWORD = "testpass"


def require_tools(*tools: str) -> None:
    """pytest.skip with a clear reason when a tool is missing from PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"required tool(s) not on PATH: {', '.join(missing)}")


def _run(reg: Registry) -> Iterator[Registry]:
    try:
        reg.start()
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An open (no auth, plain HTTP) registry."""
    require_tools(REGISTRY_BIN)
    yield from _run(Registry(tmp_path / "registry-open"))


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[Registry]:
    """A plain-HTTP registry with htpasswd auth: testuser / testpass."""
    require_tools(REGISTRY_BIN, "htpasswd")
    yield from _run(Registry(tmp_path / "registry-auth", username=AUTH_USERNAME, password=AUTH_PASSWORD))


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[Registry]:
    """An open registry over HTTPS with a self-signed cert (``ca_cert``, ``cert_dir``)."""
    require_tools(REGISTRY_BIN, "openssl")
    yield from _run(Registry(tmp_path / "registry-tls", tls=True))
