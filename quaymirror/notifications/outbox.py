"""Puts deliveries in the outbox: one row per notification subscribed to an event, in the caller's transaction.

The caller's transaction is the one that records what the event reports (a run's start or its outcome, or
the test endpoint's request), so the delivery commits with it or not at all. Delivering is the delivery
worker's (``quaymirror.notifications.delivery``); nothing here talks to a receiver.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from quaymirror.notifications.models import NotificationDelivery, RepositoryNotification
from quaymirror.settings import Settings


def quay_event_data(settings: Settings, namespace: str, name: str, message: str) -> dict[str, Any]:
    """Quay's event data for a repository event, its six keys in Quay's order (receivers written for Quay
    read these; ours follow them)."""
    repository = f"{namespace}/{name}"
    return {
        "repository": repository,
        "namespace": namespace,
        "name": name,
        "docker_url": f"{settings.server_hostname}/{repository}",
        "homepage": f"{settings.preferred_url_scheme}://{settings.server_hostname}/repository/{repository}",
        "message": message,
    }


def enqueue(session: Session, repository_id: int, event: str, payload: dict[str, Any]) -> list[NotificationDelivery]:
    """One pending delivery of ``payload`` per notification of the repository subscribed to ``event``.

    Disabled notifications (three failures) get theirs too, as in Quay: the delivery worker drops a delivery
    whose notification is disabled when its turn comes, so a reset in between lets it through.
    """
    notifications = session.scalars(
        select(RepositoryNotification)
        .where(RepositoryNotification.repository_id == repository_id, RepositoryNotification.event == event)
        .order_by(RepositoryNotification.id)).all()
    return [enqueue_one(session, notification, payload) for notification in notifications]


def enqueue_one(session: Session, notification: RepositoryNotification,
                payload: dict[str, Any]) -> NotificationDelivery:
    """A pending delivery of ``payload`` to one notification, for its event (the test endpoint's)."""
    delivery = NotificationDelivery(notification_id=notification.id, event=notification.event,
                                    payload_json=json.dumps(payload))
    session.add(delivery)
    return delivery
