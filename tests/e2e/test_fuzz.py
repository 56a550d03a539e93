"""schemathesis against a real ``quaymirror serve`` (gunicorn + PostgreSQL): several seeds, each reaching
every operation of the served document with at least 2,000 requests, zero 5xx, every answer in its
documented status, content type and schema; the database consistent afterwards.

The document is fetched from the running server's /api/v1/discovery. For each seed, part of the run narrows
the path parameters (``enum``) to the seeded names and run ids plus one unknown, so that the requests reach
real organizations, robots, repositories, mirror configurations and sync runs instead of 404ing; the rest
fuzzes the document as served. Every run has schemathesis's coverage phase, which sends each declared
bound and the value just past it (run ids up to 2^63, page and limit beyond their range, strings at and
beyond their lengths), and its negative mode, which sends what the document forbids.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from quaymirror.db import Database
from quaymirror.mirror import history
from quaymirror.mirror.models import RepoMirrorConfig, RunStatus, RunTrigger, TagOutcome
from quaymirror.repositories.models import Repository
from tests.common.live_server import MIRROR_REPOS, ORG, ROBOTS, USER, http, mirror_config

SEEDS = (20261127, 11272026, 31415926)
MIN_REQUESTS_PER_SEED = 2000
MIN_SURVIVING_CONFIGS = 3
# Seconds of fuzzing per seed: the narrowed document, then the served one. About 3,500 requests per seed
# here; the whole test stays within about 4 minutes on 2 cores.
NARROWED_SECONDS = 35
SERVED_SECONDS = 25
TOP_UPS = 2  # extra rounds of the served document for a seed still short of its requests (a loaded machine)
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance")
RUNS_PER_MIRROR = 2
SYNC_RUN_PATH = "/api/v1/repository/{namespace}/{repository}/mirror/syncs/{run_id}"

NAMES = {
    "namespace": [ORG, USER, "nosuchns"],
    "repository": sorted({r.split("/")[1] for r in MIRROR_REPOS} | {"plain", "nosuchrepo"}),
    "orgname": [ORG, USER, "nosuchorg"],
    "robot_shortname": sorted({r.split("+")[1] for r in ROBOTS} | {"nosuchbot"}),
    "username": [USER, "bystander", f"{ORG}+mirrorbot", "nosuchuser"],
    "prefix": ["f", "fuzz", "by", "zz"],
}


DELETABLE = MIRROR_REPOS[0].split("/")[1]


def seed_runs(database_url: str) -> dict[str, list[int]]:
    """RUNS_PER_MIRROR finished runs (one tag each) per mirror configuration, written with the worker's own
    history functions (the server runs without a worker); {repository name: run ids}."""
    database = Database(database_url)
    runs: dict[str, list[int]] = {}
    try:
        with database.transaction() as session:
            configs = session.execute(
                select(RepoMirrorConfig.id, RepoMirrorConfig.repository_id, Repository.name)
                .join(Repository, Repository.id == RepoMirrorConfig.repository_id)).all()
        for config_id, repository_id, name in configs:
            for index in range(RUNS_PER_MIRROR):
                with database.transaction() as session:
                    run = history.start_run(session, repository_id=repository_id, config_id=config_id,
                                            trigger=RunTrigger.SCHEDULE, worker="fuzz",
                                            lease_token=f"f{index}")
                    history.set_matched(session, run.id, 1)
                    history.record_tag(session, run.id, "latest", TagOutcome.COPIED,
                                       digest="sha256:" + "c" * 64, size=1234, duration_ms=5)
                    history.finish_run(session, run.id, RunStatus.SUCCESS)
                    runs.setdefault(name, []).append(run.id)
    finally:
        database.dispose()
    return runs


def narrowed(document: dict, runs: dict[str, list[int]]) -> dict:
    document = copy.deepcopy(document)
    for item in document["paths"].values():
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in NAMES:
                parameter["schema"] = {"type": "string", "enum": NAMES[parameter["name"]]}
        for method, operation in item.items():  # health's and entities' ?namespace=, so they find data
            for parameter in operation.get("parameters", []) if method != "parameters" else []:
                if parameter["in"] == "query" and parameter["name"] == "namespace":
                    parameter["schema"] = {"type": "string", "enum": NAMES["namespace"]}
    # One run: the seeded runs' repositories and ids (plus one unknown of each), so most requests find one.
    document["paths"][SYNC_RUN_PATH]["parameters"] = [
        {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string", "enum": [ORG]}},
        {"name": "repository", "in": "path", "required": True,
         "schema": {"type": "string", "enum": [*sorted(runs), "nosuchrepo"]}},
        {"name": "run_id", "in": "path", "required": True,
         "schema": {"type": "integer", "enum": sorted(i for ids in runs.values() for i in ids) + [999999]}},
    ]
    # Deletions reach one seeded repository only, so that configurations survive for the consistency check.
    for path, method in (("/api/v1/repository/{namespace}/{repository}", "delete"),
                         ("/api/v1/repository/{namespace}/{repository}/mirror", "delete")):
        document["paths"][path][method]["parameters"] = [
            {"name": "repository", "in": "path", "required": True,
             "schema": {"type": "string", "enum": [DELETABLE, "nosuchrepo"]}}]
    # The organization's DELETE would take every seeded row with it: it reaches no seeded organization.
    document["paths"]["/api/v1/organization/{orgname}"]["delete"]["parameters"] = [
        {"name": "orgname", "in": "path", "required": True, "schema": {"type": "string", "enum": ["nosuchorg"]}}]
    return document


PROCESSES = 4  # separate processes, one worker each: hypothesis' lambda parsing is not thread-safe on 3.11


def _groups(document: dict) -> list[list[str]]:
    """The operationIds split in PROCESSES groups, round-robin over the sorted list."""
    ids = sorted(op["operationId"] for item in document["paths"].values() for m, op in item.items()
                 if m != "parameters")
    return [ids[i::PROCESSES] for i in range(PROCESSES)]


@dataclass
class Outcome:
    """What one ``st run`` (all its processes) sent and got back."""

    code: int = 0
    output: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> responses
    operations: Counter = field(default_factory=Counter)  # operationId -> requests
    answered: Counter = field(default_factory=Counter)  # (operationId, status) -> responses
    uris: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return sum(self.operations.values())

    def add(self, other: Outcome) -> None:
        self.code = max(self.code, other.code)
        self.output += other.output
        self.statuses.update(other.statuses)
        self.operations.update(other.operations)
        self.answered.update(other.answered)
        self.uris |= other.uris


def run_schemathesis(document: dict, base: str, token: str, workdir: Path, max_examples: int,
                     max_time: int, seed: int) -> Outcome:
    """``st run`` on ``document``, PROCESSES processes in parallel, each with its own seed."""
    workdir.mkdir(parents=True, exist_ok=True)
    schema_path = workdir / "openapi.json"
    schema_path.write_text(json.dumps(document))
    runs = []
    for index, group in enumerate(_groups(document)):
        events = workdir / f"events-{index}.ndjson"
        command = [
            str(Path(sys.executable).with_name("st")), "run", str(schema_path),
            "--url", base,
            "--header", f"Authorization: Bearer {token}",
            "--checks", CHECKS,
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(max_examples),
            "--max-time", str(max_time),
            "--workers", "1",
            "--seed", str(seed + index),
            "--request-timeout", "20",
            "--continue-on-failure",
            "--generation-allow-x00", "true",
            "--no-color",
            "--report", "ndjson",
            "--report-ndjson-path", str(events),
        ]
        for operation_id in group:
            command += ["--include-operation-id", operation_id]
        log = (workdir / f"st-{index}.log").open("w")
        runs.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=workdir),
                     events, log, workdir / f"st-{index}.log"))
    outcome = Outcome()
    operation_ids = _operation_ids(document)
    for process, events, log, log_path in runs:
        try:
            process.wait(timeout=max_time + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        outcome.code = max(outcome.code, process.returncode if process.returncode >= 0 else 99)
        outcome.output.append(log_path.read_text())
        _read_events(events, operation_ids, outcome)
    return outcome


def _operation_ids(document: dict) -> dict[str, str]:
    """{"GET /api/v1/...": operationId}: schemathesis labels its scenarios with the method and path."""
    return {f"{method.upper()} {path}": op["operationId"] for path, item in document["paths"].items()
            for method, op in item.items() if method != "parameters"}


def _read_events(events: Path, operation_ids: dict[str, str], outcome: Outcome) -> None:
    """Each HTTP exchange of the NDJSON event stream, by operation and status."""
    if not events.exists():
        return
    for line in events.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if event is None:
            continue
        recorder = event["recorder"]
        operation = operation_ids.get(recorder["label"], recorder["label"])
        for interaction in recorder.get("interactions", {}).values():
            outcome.operations[operation] += 1
            outcome.uris.add(interaction["request"]["uri"])
            response = interaction.get("response")
            status = response["status_code"] if response else "no response"
            outcome.statuses[status] += 1
            outcome.answered[(operation, status)] += 1


def check_consistency(database_url: str) -> int:
    """Every mirror config has its root rule row, a robot of its namespace, valid status and state."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("""
                SELECT c.id, c.repository_id, c.root_rule_id, c.internal_robot_id, c.sync_status,
                       r.state AS repo_state, rule.id AS rule_row, rule.repository_id AS rule_repo,
                       robot.id AS robot_row, robot.is_robot AS is_robot, robot.username AS robot_name,
                       robot.robot_namespace_id AS robot_ns, ns.id AS ns_id, ns.username AS namespace
                FROM repomirrorconfig c
                JOIN repository r ON r.id = c.repository_id
                JOIN "user" ns ON ns.id = r.namespace_id
                LEFT JOIN repomirrorrule rule ON rule.id = c.root_rule_id
                LEFT JOIN "user" robot ON robot.id = c.internal_robot_id
            """)).mappings().all()
            statuses = {-2, -1, 0, 1, 2, 3}
            states = {0, 1, 2, 3}
            problems = []
            for row in rows:
                if row["rule_row"] is None or row["rule_repo"] != row["repository_id"]:
                    problems.append(f"config {row['id']}: no root rule row of its repository")
                if (row["robot_row"] is None or not row["is_robot"] or row["robot_ns"] != row["ns_id"]
                        or not row["robot_name"].startswith(row["namespace"] + "+")):
                    problems.append(f"config {row['id']}: robot {row['robot_name']!r} not a robot of "
                                    f"{row['namespace']}")
                if row["sync_status"] not in statuses:
                    problems.append(f"config {row['id']}: sync_status {row['sync_status']}")
                if row["repo_state"] not in states:
                    problems.append(f"config {row['id']}: repository state {row['repo_state']}")
            orphans = conn.execute(text("""SELECT count(*) FROM repomirrorconfig c
                                          LEFT JOIN repository r ON r.id = c.repository_id
                                          WHERE r.id IS NULL""")).scalar()
            if orphans:
                problems.append(f"{orphans} configs without a repository")
            assert not problems, "\n".join(problems)
            return len(rows)
    finally:
        engine.dispose()


def _integer_parameters(document: dict) -> list[tuple[str, dict]]:
    """(path, parameter) of every integer parameter, path or query."""
    found = []
    for path, item in document["paths"].items():
        found += [(path, p) for p in item.get("parameters", [])]
        found += [(path, p) for method, op in item.items() if method != "parameters"
                  for p in op.get("parameters", [])]
    return [(path, p) for path, p in found if p["schema"].get("type") == "integer"]


def _extremes_missed(document: dict, uris: set[str]) -> list[str]:
    """The integers just past each declared bound that no request carried."""
    paths, queries = set(), set()
    for uri in uris:
        path, _, query = uri.partition("?")
        paths.add(path.rsplit("/", 1)[-1])
        queries |= set(query.split("&"))
    missed = []
    for path, parameter in _integer_parameters(document):
        for value in (parameter["schema"]["minimum"] - 1, parameter["schema"]["maximum"] + 1):
            if parameter["in"] == "path":
                sent = str(value) in paths
            else:
                sent = f"{parameter['name']}={value}" in queries
            if not sent:
                missed.append(f"{path} {parameter['name']}={value}")
    return missed


# Path parameters of a request the test sends itself: seeded names, so only the extreme is wrong.
FILLED = {"namespace": ORG, "repository": MIRROR_REPOS[1].split("/")[1], "orgname": ORG, "run_id": "1",
          "robot_shortname": "mirrorbot", "username": USER, "prefix": "f"}


def _extreme_requests(document: dict, missed: list[str]) -> list[tuple[str, dict, int]]:
    """(path, parameter, value) of each missed extreme (as ``_extremes_missed`` names it) of a GET operation."""
    wanted = set(missed)
    found = []
    for path, parameter in _integer_parameters(document):
        if "get" not in document["paths"][path]:
            continue
        for value in (parameter["schema"]["minimum"] - 1, parameter["schema"]["maximum"] + 1):
            if f"{path} {parameter['name']}={value}" in wanted:
                found.append((path, parameter, value))
    return found


def _fill(path: str, parameter: dict, value: int) -> str:
    """``path`` with its parameters filled in, ``parameter`` set to ``value`` (in the path or the query)."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        return str(value) if parameter["in"] == "path" and name == parameter["name"] else FILLED.get(name, "x")

    url = re.sub(r"\{(\w+)\}", one, path)
    return url if parameter["in"] == "path" else f"{url}?{parameter['name']}={value}"


_SERVER_ERROR = re.compile(r'HTTP/[0-9.]+" 5[0-9][0-9] ')


def _server_errors(output: list[str], limit: int = 3) -> list[str]:
    """The server's 5xx access lines and its first ``limit`` logged errors with their tracebacks."""
    lines, shown, until = [], 0, 0
    for index, line in enumerate(output):
        if index < until:
            continue
        if _SERVER_ERROR.search(line):
            lines.append(line[:300])
        elif shown < limit and any(word in line for word in ("unhandled error", "Traceback", "unavailable")):
            shown, until = shown + 1, index + 40
            lines += [text_[:300] for text_ in output[index:until]]
    return lines


def _coverage(outcomes: dict[int, Outcome], operation_ids: list[str]) -> str:
    """Requests per operation and seed, and the statuses each operation answered (all seeds)."""
    lines = [f"{'operation':<28}" + "".join(f"{seed:>10}" for seed in outcomes) + "  statuses"]
    total = Outcome()
    for outcome in outcomes.values():
        total.add(outcome)
    for operation in operation_ids:
        statuses = sorted((status, n) for (op, status), n in total.answered.items() if op == operation)
        lines.append(f"{operation:<28}" + "".join(f"{o.operations[operation]:>10}" for o in outcomes.values())
                     + "  " + " ".join(f"{status}x{n}" for status, n in statuses))
    return "\n".join(lines)


@pytest.mark.slow
def test_fuzz_every_operation_on_a_real_server(live_server, tmp_path):
    base, token = live_server.base, live_server.token
    for repo in MIRROR_REPOS[:-1]:
        status, body = http("POST", f"{base}/api/v1/repository/{repo}/mirror", token,
                            mirror_config(f"{ORG}+mirrorbot"))
        assert status == 201, (repo, status, body)
    runs = seed_runs(live_server.database_url)
    assert len(runs) == len(MIRROR_REPOS) - 1
    # The server's DNS is the tests' fixed table, not the real one: a real registry's name does not resolve
    # there, so nothing the fuzzer sends makes the server ask the real DNS.
    status, body = http("POST", f"{base}/api/v1/repository/{MIRROR_REPOS[-1]}/mirror", token,
                        {**mirror_config("fuzzer+mine"), "external_reference": "quay.io/coreos/etcd"})
    assert (status, body["detail"]) == (400, "Cannot resolve hostname 'quay.io'"), (status, body)
    status, document = http("GET", f"{base}/api/v1/discovery")
    assert status == 200
    operation_ids = sorted(_operation_ids(document).values())
    # The coverage phase sends an integer's extremes (and the value past each) only when both are declared.
    unbounded = [(path, p["name"]) for path, p in _integer_parameters(document)
                 if not {"minimum", "maximum"} <= set(p["schema"])]
    assert not unbounded, f"integer parameters without declared bounds: {unbounded}"
    narrow = narrowed(document, runs)

    started = time.monotonic()
    outcomes: dict[int, Outcome] = {}
    for seed in SEEDS:
        outcome = outcomes[seed] = Outcome()
        rounds = [("narrowed", narrow, 30, NARROWED_SECONDS), ("served", document, 15, SERVED_SECONDS)]
        rounds += [(f"served-{n}", document, 15, SERVED_SECONDS) for n in range(1, TOP_UPS + 1)]
        for index, (name, doc, examples, budget) in enumerate(rounds):
            if index >= 2 and outcome.requests >= MIN_REQUESTS_PER_SEED:
                break
            part = run_schemathesis(doc, base, token, tmp_path / f"{seed}-{name}", examples, budget,
                                    seed + 100 * index)
            outcome.add(part)
            print(f"\nseed {seed} {name}: {part.requests} requests, exit {part.code}")
    took = time.monotonic() - started
    total = sum(o.requests for o in outcomes.values())
    print(f"fuzzing: {len(operation_ids)} operations, {total} requests in {took:.1f}s; "
          + ", ".join(f"seed {seed}: {o.requests}" for seed, o in outcomes.items()))
    print(_coverage(outcomes, operation_ids))

    errors = "\n".join(_server_errors(live_server.output))
    for seed, outcome in outcomes.items():
        tail = "\n".join(line[:300] for text_ in outcome.output for line in text_.splitlines()[-150:])
        assert outcome.code == 0, \
            f"schemathesis (seed {seed}) found failures:\n{tail}\n--- server errors\n{errors}"
        server_errors = {status: n for status, n in outcome.statuses.items()
                         if not isinstance(status, int) or status >= 500}
        assert not server_errors, f"seed {seed}: {server_errors}\n--- server errors\n{errors}"
        assert outcome.requests >= MIN_REQUESTS_PER_SEED, (seed, outcome.requests)
        missed = [op for op in operation_ids if not outcome.operations[op]]
        assert not missed, f"seed {seed} never reached {missed}"
    # schemathesis's coverage phase sends each integer's values just past its bounds, within the time budget:
    # on a loaded machine a seed may not reach them all. Those no seed sent, the test sends itself, so every
    # one is asked on every run whatever the machine's speed; each must be refused as a client error.
    everything = Outcome()
    for outcome in outcomes.values():
        everything.add(outcome)
    missed_extremes = _extremes_missed(document, everything.uris)
    print(f"bound extremes no seed sent (sent by the test): {missed_extremes}")
    for path, parameter, value in _extreme_requests(document, missed_extremes):
        status, body = http("GET", f"{base}{_fill(path, parameter, value)}", token)
        assert 400 <= status < 500 and isinstance(body, dict), (path, parameter["name"], value, status, body)
    # The narrowed history requests found real runs, not only 404s.
    found = Counter()
    for outcome in outcomes.values():
        found.update({op: n for (op, status), n in outcome.answered.items() if status == 200})
    assert found["getRepoMirrorSync"] and found["listRepoMirrorSyncs"], found
    assert not [line for line in live_server.output if "Traceback" in line or "unhandled error" in line], \
        live_server.log()
    configs = check_consistency(live_server.database_url)
    print(f"database consistent: {configs} mirror configurations checked")
    assert configs >= MIN_SURVIVING_CONFIGS
