"""Quay's recorded exchanges, replayed through a test client: what the capture replays of the repository
mirror (tests/mirror/test_api_quay_captures.py) and the organization mirror
(tests/orgmirror/test_quay_captures.py) share.

A capture file holds Quay's answers with the tokens as labels and the host as a placeholder; each replay
keeps its own expectations (the deliberate differences, how it compares) and sends through :func:`send`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUR_HOST = "localhost"  # what Flask's test client sends
GARBAGE_TOKEN = "notarealtoken"  # what the recording's garbage-token label stands for


@dataclass(frozen=True)
class Captures:
    """A recording: its exchanges in order, and our text of a recorded one (the host placeholder filled)."""

    exchanges: list[dict[str, Any]]
    placeholder: str
    host: str

    @classmethod
    def load(cls, path: Path, host: str = OUR_HOST) -> Captures:
        """The recording at ``path``; its placeholder stands for ``host`` (with a scheme where Quay's had one)."""
        captures = json.loads(path.read_text())
        return cls(captures["exchanges"], captures["host_placeholder"], host)

    def ours(self, text: str) -> str:
        return text.replace(self.placeholder, self.host)

    def expected(self, number: int, exchange: dict[str, Any], deliberate: Deliberate | None) -> tuple[int, str, str]:
        """The status and body text we answer to pair ``number`` (Quay's, or the ``deliberate`` one), and
        the prefix that names the pair in a problem line."""
        recorded = exchange["response_body"]
        status = deliberate.status if deliberate else exchange["status"]
        body = deliberate.body(recorded) if deliberate else self.ours(recorded)
        return status, body, f"pair {number} ({exchange['method']} {exchange['path']}: {exchange['label']})"


def invalid_request(detail: str) -> str:
    """Quay's 400 body for a request it refused, as our host answers it."""
    return json.dumps({
        "detail": detail, "error_message": detail, "error_type": "invalid_request", "title": "invalid_request",
        "type": f"http://{OUR_HOST}/api/v1/error/invalid_request", "status": 400,
    })


REQUIRES_AUTHENTICATION = json.dumps({
    "detail": "Requires authentication", "error_message": "Requires authentication", "error_type": "invalid_token",
    "title": "invalid_token", "type": f"http://{OUR_HOST}/api/v1/error/invalid_token", "status": 401,
})


@dataclass(frozen=True)
class Deliberate:
    """Our answer to a pair where the README lists a deliberate difference from Quay."""

    why: str
    status: int
    body: Callable[[str], str]  # recorded body -> the body we answer
    quay_headers: bool = True  # Quay's Content-Type and CORS headers still apply


def one_line(detail: str) -> Deliberate:
    return Deliberate("Quay dumps its JSON schema; we answer one readable line naming the field",
                      400, lambda _recorded: invalid_request(detail))


def send(client, exchange: dict[str, Any], headers: dict[str, str], tokens: Mapping[str, str], garbage: str):
    """One recorded request through ``client``: ``headers`` and the bearer token its label names in
    ``tokens`` (the label ``garbage``: a token that exists nowhere; none: anonymous)."""
    label = exchange["token"]
    if label == garbage:
        headers = {**headers, "Authorization": f"Bearer {GARBAGE_TOKEN}"}
    elif label is not None:
        headers = {**headers, "Authorization": f"Bearer {tokens[label]}"}
    body = exchange["request_body"]
    return client.open(exchange["path"], method=exchange["method"], headers=headers,
                       data=body.encode() if isinstance(body, str) else None)
