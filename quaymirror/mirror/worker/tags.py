"""Tag filtering: Quay's rule, a list of globs of which any one matches, case-sensitive on every platform."""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

# The OCI distribution tag grammar; anything else cannot be a tag and never reaches skopeo or a path.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def is_valid_tag(tag: object) -> bool:
    return isinstance(tag, str) and TAG_RE.match(tag) is not None


def filter_tags(tags: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """Tags matching any pattern (each one ``fnmatchcase`` glob), de-duplicated, in code-point order.

    Quay uses ``fnmatch.fnmatch``, which is case-sensitive only on POSIX;
    ``fnmatchcase`` gives that behaviour everywhere.
    """
    patterns = [p for p in patterns if isinstance(p, str)]
    return sorted({t for t in tags if is_valid_tag(t) and any(fnmatchcase(t, p) for p in patterns)})
