"""The API's date formats (quaymirror.dates): one per wire format, and Quay's parser. Pure functions."""

from __future__ import annotations

from datetime import datetime

import pytest

from quaymirror.dates import format_date, format_iso, format_rfc2822, parse_date


def test_quays_date_is_at_second_precision_and_reads_back():
    value = datetime(2026, 1, 2, 3, 4, 5, 678901)
    assert format_date(value) == "2026-01-02T03:04:05Z"
    assert parse_date(format_date(value)) == value.replace(microsecond=0)
    assert format_date(None) is None


def test_quays_date_pads_every_field_so_any_stored_date_reads_back():
    """A year below 1000 keeps four digits (strftime does not pad it everywhere)."""
    early = datetime(5, 1, 2, 3, 4, 5)
    assert format_date(early) == "0005-01-02T03:04:05Z"
    assert parse_date(format_date(early)) == early


@pytest.mark.parametrize("text, expected", [
    ("2020-01-02T06:30:00Z", datetime(2020, 1, 2, 6, 30)),
    ("2020-1-2T6:30:0Z", datetime(2020, 1, 2, 6, 30)),  # Quay's strptime takes unpadded fields
])
def test_quays_parser_accepts_what_quay_accepts(text, expected):
    assert parse_date(text) == expected


@pytest.mark.parametrize("text", ["2020-01-02 06:30:00", "2020-01-02T06:30:00+00:00", "2020-01-02", "",
                                  "2020-13-02T06:30:00Z"])
def test_quays_parser_refuses_the_rest(text):
    with pytest.raises(ValueError):
        parse_date(text)


def test_a_robots_created_is_an_email_date_in_utc():
    assert format_rfc2822(datetime(2006, 1, 2, 15, 4, 5, 999999)) == "Mon, 02 Jan 2006 15:04:05 -0000"


def test_the_health_timestamps_are_isoformat_with_a_z():
    assert format_iso(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"
    assert format_iso(datetime(2026, 1, 2, 3, 4, 5, 123)) == "2026-01-02T03:04:05.000123Z"
    assert format_iso(None) is None
