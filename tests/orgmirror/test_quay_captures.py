"""Replay the 122 exchanges recorded against real Quay's organization mirror API, in order, on each backend.

``quay_captures.json`` holds Quay's recording (tokens as labels, the host as ``{host}``). Its five setup
entries stood for Quay's worker between requests; ``SETUPS`` does the same here with our models. Every pair
must match Quay's status, JSON body (keys in the same order) and Content-Type, except:

* the pairs in ``DELIBERATE``, where the test asserts our documented answer instead;
* timestamps Quay took from its clock (creation, a sync-now's start, a cancel's expiry, discovery): ours must
  be a timestamp of the same format class (the sync dates at second precision, which POST and PUT accept:
  Quay answers microseconds it then refuses), or null where Quay's is null;
* verify (pair 112), whose message depends on the network: its status and keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from quaymirror.accounts import service as accounts
from quaymirror.orgmirror.models import (
    OrgMirrorConfig,
    OrgMirrorRepository,
    OrgMirrorRepoStatus,
    OrgMirrorStatus,
)
from quaymirror.repositories import service as repositories
from quaymirror.repositories.models import Repository, RepositoryState
from tests.common import quay_captures
from tests.common.quay_captures import (
    OUR_HOST,
    REQUIRES_AUTHENTICATION,
    Deliberate,
    invalid_request,
    one_line,
)

# Quay's host stood in its answers with the scheme.
RECORDING = quay_captures.Captures.load(Path(__file__).parent / "quay_captures.json", host=f"http://{OUR_HOST}")
EXCHANGES = RECORDING.exchanges
CLOCK_DATES = ("creation_date", "sync_start_date", "sync_expiration_date", "discovery_date", "last_sync_date")
FRACTION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")
SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
ANY_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SECOND_PRECISION = ("sync_start_date", "sync_expiration_date")
VERIFY = 112


MISSING = "Missing data for required field."
CSRF = Deliberate("Quay answers a CSRF error to a POST without a token; we answer 401 as for GET",
                  401, lambda _recorded: REQUIRES_AUTHENTICATION)

def our_repository_view(recorded: str) -> str:
    """quaymirror's repository view of the recorded one: the same state and rights, without the keys of
    Quay's features quaymirror lacks (tags, billing), the description as stored ("")."""
    body = json.loads(recorded)
    order = ("namespace", "name", "kind", "description", "is_public", "is_organization", "is_starred", "state",
             "can_write", "can_admin", "status_token", "trust_enabled", "tag_expiration_s")
    return json.dumps({key: "" if key == "description" else body[key] for key in order})


REPOSITORY_VIEW = Deliberate("the repositories domain's view (no tags, no billing keys); state and rights as "
                             "Quay's", 200, our_repository_view)

DELIBERATE: dict[int, Deliberate] = {
    10: CSRF,
    26: one_line(f"external_namespace: {MISSING}"),
    27: one_line(f"external_registry_type: {MISSING}"),
    28: one_line(f"external_registry_url: {MISSING}"),
    29: one_line(f"external_namespace: {MISSING}"),
    30: one_line(f"robot_username: {MISSING}"),
    31: one_line(f"visibility: {MISSING}"),
    32: one_line(f"sync_interval: {MISSING}"),
    33: one_line(f"sync_start_date: {MISSING}"),
    34: one_line("sync_interval: Not a valid integer."),
    35: one_line("is_enabled: Not a valid boolean."),
    36: one_line("external_registry_type: Must be one of: harbor, quay, registry."),
    37: one_line("external_registry_type: Must be one of: harbor, quay, registry."),
    38: one_line("visibility: Must be one of: public, private."),
    39: one_line("sync_interval: Must be greater than or equal to 60."),
    40: one_line("skopeo_timeout: Must be greater than or equal to 30."),
    41: one_line("skopeo_timeout: Must be less than or equal to 3600."),
    44: one_line("external_namespace: Longer than maximum length 255."),
    45: one_line("repository_filters: Not a valid list."),
    46: one_line("repository_filters.1: Not a valid string."),
    47: one_line("external_registry_config.verify_tls: Not a valid boolean."),
    62: Deliberate("quaymirror has no proxy cache, so nothing stands in the way of proxyorg's mirror",
                   201, lambda _recorded: '""'),
    76: one_line("sync_interval: Must be greater than or equal to 60."),
    101: CSRF,
    118: REPOSITORY_VIEW,
    124: REPOSITORY_VIEW,
    120: Deliberate("as 26 (changestate's schema)", 400, lambda _recorded: invalid_request(
        "state: Must be one of: NORMAL, READ_ONLY, MIRROR.")),
}


def _set_config_status(name: str, value: OrgMirrorStatus) -> Callable[[Any], None]:
    """What Quay's worker would have done: the configuration of ``name`` in status ``value``."""

    def run(session) -> None:
        org = accounts.get_by_name(session, name)
        session.execute(update(OrgMirrorConfig).where(OrgMirrorConfig.organization_id == org.id)
                        .values(sync_status=value))

    return run


def _discovered(session) -> None:
    """Pair 106: a discovery found app-one, app-two and lib1; app-one was created (ORG_MIRROR, the robot an
    admin of it) and synced, app-two is syncing, the discovery ended SUCCESS."""
    org = accounts.get_by_name(session, "sellnsmall")
    config = session.scalars(select(OrgMirrorConfig).where(OrgMirrorConfig.organization_id == org.id)).one()
    rows = {name: OrgMirrorRepository(org_mirror_config_id=config.id, repository_name=name)
            for name in ("app-one", "app-two", "lib1")}
    session.add_all(rows.values())
    repo = repositories.create(session, org, "app-one", visibility=config.visibility,
                               state=RepositoryState.ORG_MIRROR)
    repositories.set_permission(session, repo, config.internal_robot, "admin")
    rows["app-one"].repository_id = repo.id
    rows["app-one"].sync_status = OrgMirrorRepoStatus.SUCCESS
    rows["app-one"].status_message = "synced"
    rows["app-two"].sync_status = OrgMirrorRepoStatus.SYNCING
    config.sync_status = OrgMirrorStatus.SUCCESS


SETUPS: dict[int, Callable[[Any], None]] = {
    1: lambda _session: None,  # the robots: the ``orgs`` fixture made them
    90: _set_config_status("library", OrgMirrorStatus.FAIL),
    92: _set_config_status("library", OrgMirrorStatus.SUCCESS),
    103: _set_config_status("sellnsmall", OrgMirrorStatus.SYNCING),
    106: _discovered,
}


def _clock_dates(number: int, ours_value: Any, recorded: Any, path: str, problems: list[str]) -> Any:
    """``recorded`` with each clock-taken timestamp replaced by ours once ours is of the right kind."""
    if isinstance(recorded, dict) and isinstance(ours_value, dict):
        out = {}
        for key, value in recorded.items():
            mine = ours_value.get(key)
            if key in CLOCK_DATES and isinstance(value, str) and FRACTION.match(value):
                pattern = SECONDS if key in SECOND_PRECISION else ANY_ISO
                if not (isinstance(mine, str) and pattern.match(mine)):
                    problems.append(f"pair {number}: {path}{key} is {mine!r}, expected a timestamp like {value!r}")
                out[key] = mine
            else:
                out[key] = _clock_dates(number, mine, value, f"{path}{key}.", problems)
        return out
    if isinstance(recorded, list) and isinstance(ours_value, list) and len(recorded) == len(ours_value):
        return [_clock_dates(number, mine, value, path, problems) for mine, value in zip(ours_value, recorded,
                                                                                           strict=True)]
    return recorded


def compare(exchange: dict[str, Any], response) -> list[str]:
    number = exchange["n"]
    deliberate = DELIBERATE.get(number)
    status, expected_text, prefix = RECORDING.expected(number, exchange, deliberate)
    text = response.get_data(as_text=True)
    problems: list[str] = []
    if response.status_code != status:
        problems.append(f"{prefix}: status {response.status_code}, expected {status}; body {text!r}")
    if expected_text.strip() == "":
        if text != "":
            problems.append(f"{prefix}: body {text!r}, expected none")
        return problems
    try:
        body = json.loads(text)
    except ValueError:
        return [*problems, f"{prefix}: body is not JSON: {text!r}"]
    expected = json.loads(expected_text)
    if number == VERIFY:
        if list(body) != list(expected) or not isinstance(body["message"], str) or body["success"] is not False:
            problems.append(f"{prefix}: body {text!r}, expected the keys of {expected_text!r}")
        return problems
    expected = _clock_dates(number, body, expected, "", problems)
    # Compared as JSON text so that the keys' order counts too.
    if json.dumps(body) != json.dumps(expected):
        problems.append(f"{prefix}: body {text!r}, expected {json.dumps(expected)!r}")
    if not text.endswith("\n"):
        problems.append(f"{prefix}: body does not end with a newline like flask-restful's")
    quay_type = "application/json" if deliberate else exchange["response_content_type"]
    if response.headers.get("Content-Type") != quay_type:
        problems.append(f"{prefix}: Content-Type {response.headers.get('Content-Type')!r}, "
                        f"expected {quay_type!r}")
    return problems


def test_every_pair_is_accounted_for():
    assert [e["n"] for e in EXCHANGES] == list(range(1, 128))
    assert {e["n"] for e in EXCHANGES if e["kind"] == "setup"} == set(SETUPS)
    assert set(DELIBERATE) <= {e["n"] for e in EXCHANGES if e["kind"] == "exchange"}


def test_replay_quay_captures(quay_client, orgs, database):
    problems: list[str] = []
    replayed = 0
    for exchange in EXCHANGES:
        if exchange["kind"] == "setup":
            with database.transaction() as session:
                SETUPS[exchange["n"]](session)
            continue
        headers = {"Accept": "application/json"}
        if exchange["content_type"]:
            headers["Content-Type"] = exchange["content_type"]
        response = quay_captures.send(quay_client, exchange, headers, orgs.tokens, garbage="GARBAGE")
        problems.extend(compare(exchange, response))
        replayed += 1
    assert replayed == 122
    assert not problems, "\n".join(problems)

    # After pair 122's DELETE: app-one is back to NORMAL and kept, the discovered rows and configs are gone.
    with database.sessionmaker() as session:
        repo = session.scalars(select(Repository).where(Repository.name == "app-one")).one()
        assert repo.state == RepositoryState.NORMAL
        assert session.scalars(select(OrgMirrorRepository)).all() == []
        remaining = session.scalars(select(OrgMirrorConfig)).all()
        assert [accounts.get_by_name(session, "proxyorg").id] == [c.organization_id for c in remaining]
