"""Replay the 66 exchanges recorded against real Quay and compare our answers, in order, on each backend.

``quay_captures.json`` was built once from Quay's recordings (tokens replaced
by the labels below, the host by ``{host}``). Every pair must match Quay's
status, JSON body (keys in the same order), Content-Type and CORS headers,
except the pairs in ``DELIBERATE``: there the test asserts our documented
answer instead. No pair is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from quaymirror.mirror.models import RepoMirrorConfig, RepoMirrorRule
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common import quay_captures
from tests.common.quay_captures import REQUIRES_AUTHENTICATION, Deliberate, invalid_request, one_line

pytestmark = pytest.mark.usefixtures("quay_dns")  # no request of these tests asks the real DNS

RECORDING = quay_captures.Captures.load(Path(__file__).parent / "quay_captures.json")
EXCHANGES = RECORDING.exchanges
CORS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Max-Age",
        "Access-Control-Allow-Headers")


def ordered(text: str) -> Any:
    """Parse JSON keeping key order, so two bodies compare equal only with the same key order."""
    return json.loads(text, object_pairs_hook=list)


def with_rule(recorded: str, rule: list[str]) -> str:
    body = json.loads(RECORDING.ours(recorded))
    body["root_rule"]["rule_value"] = rule
    return json.dumps(body)


DELIBERATE: dict[int, Deliberate] = {
    13: one_line("external_reference: Missing data for required field."),
    14: one_line("external_reference: Missing data for required field."),
    15: one_line("skopeo_timeout_interval: Missing data for required field."),
    16: Deliberate("Quay crashes (500 HTML) without robot_username; it is a required field here",
                   400, lambda _recorded: invalid_request("robot_username: Missing data for required field."),
                   quay_headers=False),
    17: one_line("skopeo_timeout_interval: Must be greater than or equal to 300."),
    18: one_line("sync_interval: Must be greater than or equal to 0."),
    19: one_line("sync_interval: Not a valid integer."),
    22: one_line("root_rule.rule_kind: Must be one of: tag_glob_csv."),
    32: Deliberate("Quay answers a CSRF error to a POST without a token; we answer 401 as for GET",
                   401, lambda _recorded: REQUIRES_AUTHENTICATION, quay_headers=False),
    44: one_line("skopeo_timeout_interval: Must be greater than or equal to 300."),
    55: Deliberate("Quay's PUT of root_rule (pair 41) updated an orphan rule row; ours updates the config's",
                   200, lambda recorded: with_rule(recorded, ["v1.*"])),
    58: Deliberate("as 55", 200, lambda recorded: with_rule(recorded, ["v1.*"])),
    61: Deliberate("as 32", 401, lambda _recorded: REQUIRES_AUTHENTICATION, quay_headers=False),
    63: Deliberate("as 55", 200, lambda recorded: with_rule(recorded, ["v1.*"])),
    66: Deliberate("Quay routed DELETE to a repository 'simple/mirror' and deleted nothing; ours deletes "
                   "the configuration (checked after the replay)", 204, lambda _recorded: ""),
}

# Quay sends no CORS headers on its DataModelException answers (pair 29) nor on its crash (pair 16);
# every answer under /api/ carries them here, so browsers can read the error too.
CORS_ADDED = {16, 29}


def request_headers(exchange: dict[str, Any]) -> dict[str, str]:
    return {k: RECORDING.ours(v) for k, v in exchange["request_headers"].items() if k != "Host"}


def compare(number: int, exchange: dict[str, Any], response) -> list[str]:
    """Every difference between our answer and the expected one, as readable lines."""
    problems: list[str] = []
    deliberate = DELIBERATE.get(number)
    recorded = exchange["response_body"]
    status, expected_body, prefix = RECORDING.expected(number, exchange, deliberate)
    text = response.get_data(as_text=True)
    if response.status_code != status:
        problems.append(f"{prefix}: status {response.status_code}, expected {status}; body {text!r}")
    if expected_body.strip() == "":
        if text != "":
            problems.append(f"{prefix}: body {text!r}, expected no body")
    else:
        try:
            if ordered(text) != ordered(expected_body):
                problems.append(f"{prefix}: body {text!r}, expected {expected_body!r}")
        except ValueError:
            problems.append(f"{prefix}: body is not JSON: {text!r}")
        if recorded.endswith("\n") and not text.endswith("\n"):
            problems.append(f"{prefix}: body does not end with a newline like flask-restful's")
    recorded_headers = dict(exchange["response_headers"])
    if deliberate is None or deliberate.quay_headers:
        if response.headers.get("Content-Type") != recorded_headers.get("Content-Type"):
            problems.append(f"{prefix}: Content-Type {response.headers.get('Content-Type')!r}, "
                            f"Quay {recorded_headers.get('Content-Type')!r}")
    else:
        if response.headers.get("Content-Type") != "application/json":
            problems.append(f"{prefix}: Content-Type {response.headers.get('Content-Type')!r}, expected JSON")
    for name in CORS:
        expected = recorded_headers.get(name) or dict(EXCHANGES[0]["response_headers"])[name]
        if name not in recorded_headers and number not in CORS_ADDED:
            problems.append(f"{prefix}: Quay sent no {name}; update CORS_ADDED")
        if response.headers.get(name) != expected:
            problems.append(f"{prefix}: {name} {response.headers.get(name)!r}, expected {expected!r}")
    return problems


def test_every_pair_is_accounted_for():
    assert [e["pair"] for e in EXCHANGES] == list(range(1, 67))
    assert set(DELIBERATE) <= set(range(1, 67))
    assert {e["token"] for e in EXCHANGES} <= {None, "garbage", "admin", "initdb", "read", "write", "reader"}


def test_replay_quay_captures(client, world, database):
    # Pair 6 uses a second devtable token with repo:admin (Quay's initdb built-in one).
    world.token("initdb", "devtable", "repo:admin")
    problems: list[str] = []
    replayed = 0
    for exchange in EXCHANGES:
        number = exchange["pair"]
        response = quay_captures.send(client, exchange, request_headers(exchange), world.tokens, garbage="garbage")
        problems.extend(compare(number, exchange, response))
        replayed += 1
    assert replayed == 66
    assert not problems, "\n".join(problems)

    # Pair 66 really deleted the configuration: a second DELETE and a GET find nothing, the rules are
    # gone, and the repository is back to NORMAL.
    admin = world.headers("admin")
    again = client.delete("/api/v1/repository/devtable/simple/mirror", headers=admin)
    assert again.status_code == 404 and again.get_json()["error_type"] == "not_found"
    assert client.get("/api/v1/repository/devtable/simple/mirror", headers=admin).status_code == 404
    with database.sessionmaker() as session:
        repo = session.scalars(select(Repository).where(Repository.name == "simple")).one()
        assert repo.state == RepositoryState.NORMAL
        assert session.scalars(select(RepoMirrorConfig)).all() == []
        assert session.scalars(select(RepoMirrorRule)).all() == []
