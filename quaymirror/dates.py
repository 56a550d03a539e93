"""The date formats of the API: one formatter per wire format, each used by the fields that Quay's clients
read in that format, and Quay's one date parser.

Every datetime here is naive UTC, as the database stores them (``db.utcnow``).
"""

from __future__ import annotations

import calendar
from datetime import datetime
from email.utils import formatdate

QUAY_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_date(value: datetime | None) -> str | None:
    """Quay's ``%Y-%m-%dT%H:%M:%SZ``, at second precision: the mirror configuration's ``sync_start_date`` and
    ``sync_expiration_date``, and (in the same format, for the same clients) the sync history's ``started``
    and ``finished``.

    Second precision lets a client PUT back exactly what it read. Written by hand rather than with strftime,
    which does not pad a year below 1000 to four digits on every platform (``parse_date`` reads it back).
    """
    if value is None:
        return None
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}Z"
    )


def parse_date(text: str) -> datetime:
    """Quay's ``strptime("%Y-%m-%dT%H:%M:%SZ")``: naive UTC, non-padded fields accepted; ValueError otherwise."""
    return datetime.strptime(text, QUAY_DATE_FORMAT)


def format_rfc2822(value: datetime) -> str:
    """A robot account's ``created``: Quay formats it as an e-mail date, ``Mon, 02 Jan 2006 15:04:05 -0000``
    (whatever the server's locale)."""
    return formatdate(calendar.timegm(value.utctimetuple()))


def format_iso(value: datetime | None) -> str | None:
    """The mirror health's timestamps (``last_check``, each issue's ``timestamp``, a repository's
    ``last_sync``): Quay writes ``isoformat() + "Z"``, microseconds included when there are any."""
    return None if value is None else value.isoformat() + "Z"
