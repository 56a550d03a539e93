"""Repository notifications (Quay's), the outbox of their deliveries, and each delivery's attempts.

``repositorynotification`` (:class:`RepositoryNotification`): Quay's table, one row per subscription of a
repository to one event by one method. Quay keeps the event and method names in lookup tables; ours are the
names themselves (they are what the API speaks). ``number_of_failures`` is Quay's counter: three failed
deliveries in a row disable the notification until the reset endpoint puts it back to 0.

``notificationdelivery`` (:class:`NotificationDelivery`): the outbox. A run's outcome and its deliveries are
written in one transaction, so a crash can neither lose a delivery nor send one for an outcome that was
rolled back. Any worker claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) with a lease, like mirror
runs, so N workers never send one delivery twice. ``uuid`` goes out as ``X-Quaymirror-Delivery`` on every
attempt of that delivery, so a receiver can de-duplicate.

``notificationattempt`` (:class:`NotificationAttempt`): one row per attempt (time, HTTP status or error), the
last few shown by ``GET .../notification/<uuid>``.
"""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from quaymirror.db import Base, owned_by, utcnow
from quaymirror.mirror.models import new_uuid

# The events a notification may subscribe to: Quay's three repository-mirror events (the same three serve
# organization-mirrored repositories, which Quay leaves silent).
EVENTS = ("repo_mirror_sync_started", "repo_mirror_sync_success", "repo_mirror_sync_failed")
# The methods we deliver by. Quay also has quay_notification (its UI's bell), flowdock and hipchat (dead
# services); they are refused with a 400 where Quay answers 500.
METHODS = ("webhook", "slack", "email")


class DeliveryState(enum.IntEnum):
    """Where a delivery stands. PENDING rows are due at ``available_after``; a claimed row is DELIVERING
    until its attempt is recorded (or its lease runs out and another worker takes it)."""

    PENDING = 0
    DELIVERING = 1
    DELIVERED = 2
    GAVE_UP = 3  # every attempt failed
    DROPPED = 4  # the notification was disabled (three failures) when the delivery's turn came


class RepositoryNotification(Base):
    __tablename__ = "repositorynotification"

    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    repository_id: Mapped[int] = owned_by("repository")
    event: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    title: Mapped[str | None] = mapped_column(String(255))
    config_json: Mapped[str] = mapped_column(Text, default="{}")
    event_config_json: Mapped[str] = mapped_column(Text, default="{}")
    number_of_failures: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    @property
    def config(self) -> dict[str, Any]:
        return _decode(self.config_json)

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        self.config_json = json.dumps(value)

    @property
    def event_config(self) -> dict[str, Any]:
        return _decode(self.event_config_json)

    @event_config.setter
    def event_config(self, value: dict[str, Any]) -> None:
        self.event_config_json = json.dumps(value)


class NotificationDelivery(Base):
    __tablename__ = "notificationdelivery"
    # The claim query: due rows in order of their turn.
    __table_args__ = (Index("ix_notificationdelivery_due", "state", "available_after"),)

    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    notification_id: Mapped[int] = owned_by("repositorynotification")
    event: Mapped[str] = mapped_column(String(64))
    # The body's data as the event built it (Quay's six keys, then ours); the method renders it.
    payload_json: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[int] = mapped_column(Integer, default=DeliveryState.PENDING)
    available_after: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime)

    @property
    def payload(self) -> dict[str, Any]:
        return _decode(self.payload_json)


class NotificationAttempt(Base):
    __tablename__ = "notificationattempt"

    delivery_id: Mapped[int] = owned_by("notificationdelivery")
    notification_id: Mapped[int] = owned_by("repositorynotification")
    attempted: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)  # the receiver's answer, when there was one
    error: Mapped[str | None] = mapped_column(String(1024))  # why it failed (never a secret or a query string)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


def _decode(text: str | None) -> dict[str, Any]:
    """A stored JSON object; ``{}`` when it does not parse, as Quay falls back."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
