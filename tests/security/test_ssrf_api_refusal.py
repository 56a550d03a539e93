"""The API's SSRF refusal: Quay's exact body for the client, the refused host and the way out in the server log."""

from __future__ import annotations

import logging

import pytest

from quaymirror.security import ssrf
from tests.common.mirror_api import MIRROR, mirror_body

NOT_ALLOWED = "The provided registry location is not allowed"
DNS = {"private.example.com": ["10.1.2.3"], "localhost": ["127.0.0.1"], "quay.io": ["34.224.196.162"]}


@pytest.mark.parametrize(("reference", "logged"), [
    ("10.0.0.1/team/repo",
     ("host 10.0.0.1 refused by the SSRF rules: URL points to a private or reserved IP address; "
     "QUAYMIRROR_SSRF_ALLOWED_HOSTS allows it when it lists 10.0.0.1 or a CIDR containing it")),
    ("private.example.com:5000/team/repo",
     ("host private.example.com (10.1.2.3) refused by the SSRF rules: URL resolves to a private or reserved IP "
     "address; QUAYMIRROR_SSRF_ALLOWED_HOSTS allows it when it lists private.example.com or a CIDR containing "
     "10.1.2.3")),
    ("localhost/team/repo",
     ("host localhost refused by the SSRF rules: Hostname 'localhost' is not allowed; "
     "QUAYMIRROR_SSRF_ALLOWED_HOSTS allows it when it lists localhost")),
])
def test_a_refused_reference_keeps_quays_body_and_logs_the_host(client, world, caplog, reference, logged):
    caplog.set_level(logging.INFO, logger="quaymirror")
    with ssrf.use_resolver(DNS):
        response = client.post(MIRROR, json=mirror_body(external_reference=reference), headers=world.headers("admin"))
    assert response.status_code == 400
    assert response.get_json() == {
        "detail": NOT_ALLOWED, "error_message": NOT_ALLOWED, "error_type": "invalid_request",
        "title": "invalid_request", "type": "http://localhost/api/v1/error/invalid_request", "status": 400}
    records = [r for r in caplog.records if r.name == "quaymirror.mirror.service"]
    assert [(r.levelname, r.getMessage()) for r in records] == [("INFO", f"mirror reference refused: {logged}")]
    assert "fakePassword" not in caplog.text and "fakeUsername" not in caplog.text
