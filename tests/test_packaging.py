"""The wheel ships every package of ``quaymirror/``: pyproject.toml lists them by hand (the migrations ship
inside the package under another name), so a new domain package left out of the list would install an
application that cannot import itself (the container image once did)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_quaymirror_is_in_the_wheel() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "quaymirror").rglob("__init__.py")}
    assert on_disk - listed == set()
