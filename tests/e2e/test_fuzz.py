"""schemathesis against a real ``quaymirror serve`` (gunicorn + PostgreSQL): every operation of the served
document, at least 2,000 requests, zero 5xx, every answer in its documented status and schema; the
database consistent afterwards.

The document is fetched from the running server's /api/v1/discovery. For half of the run the path
parameters are narrowed (``enum``) to the seeded names plus one unknown name, so that the requests reach
real organizations, robots, repositories and mirror configurations instead of 404ing; the other half
fuzzes the document as served.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.e2e.conftest import MIRROR_REPOS, ORG, ROBOTS, USER, http, mirror_config

MIN_REQUESTS = 2000
MIN_SURVIVING_CONFIGS = 3
TIME_BUDGET = 140  # seconds for the whole fuzzing, both runs
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"

NAMES = {
    "namespace": [ORG, USER, "nosuchns"],
    "repository": sorted({r.split("/")[1] for r in MIRROR_REPOS} | {"plain", "nosuchrepo"}),
    "orgname": [ORG, USER, "nosuchorg"],
    "robot_shortname": sorted({r.split("+")[1] for r in ROBOTS} | {"nosuchbot"}),
    "username": [USER, "bystander", f"{ORG}+mirrorbot", "nosuchuser"],
    "prefix": ["f", "fuzz", "by", "zz"],
}


DELETABLE = MIRROR_REPOS[0].split("/")[1]


def narrowed(document: dict) -> dict:
    document = copy.deepcopy(document)
    for item in document["paths"].values():
        for parameter in item.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] in NAMES:
                parameter["schema"] = {"type": "string", "enum": NAMES[parameter["name"]]}
            elif parameter["in"] == "path" and parameter["schema"].get("type") == "integer":
                parameter["schema"] = {"type": "integer", "minimum": 0, "maximum": 5}
    # Deletions reach one seeded repository only, so that configurations survive for the consistency check.
    for path, method in (("/api/v1/repository/{namespace}/{repository}", "delete"),
                         ("/api/v1/repository/{namespace}/{repository}/mirror", "delete")):
        document["paths"][path][method]["parameters"] = [
            {"name": "repository", "in": "path", "required": True,
             "schema": {"type": "string", "enum": [DELETABLE, "nosuchrepo"]}}]
    return document


PROCESSES = 4  # separate processes, one worker each: hypothesis' lambda parsing is not thread-safe on 3.11


def _groups(document: dict) -> list[list[str]]:
    """The operationIds split in PROCESSES groups, round-robin over the sorted list."""
    ids = sorted(op["operationId"] for item in document["paths"].values() for m, op in item.items()
                 if m != "parameters")
    return [ids[i::PROCESSES] for i in range(PROCESSES)]


def run_schemathesis(document: dict, base: str, token: str, workdir: Path, max_examples: int,
                     max_time: int, seed: int) -> tuple[int, int, str]:
    """``st run`` on ``document``, PROCESSES processes in parallel; (worst exit code, requests sent, output)."""
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
    code, sent, output = 0, 0, []
    for process, events, log, log_path in runs:
        try:
            process.wait(timeout=max_time + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        code = max(code, process.returncode if process.returncode >= 0 else 99)
        sent += _count_requests(events)
        output.append(log_path.read_text())
    return code, sent, "\n".join(output)


def _count_requests(events: Path) -> int:
    """The HTTP interactions recorded in the NDJSON event stream (one per request sent)."""
    if not events.exists():
        return 0
    total = 0
    for line in events.read_text().splitlines():
        total += line.count('"request":')
    return total


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


@pytest.mark.slow
def test_fuzz_every_operation_on_a_real_server(live_server, tmp_path):
    base, token = live_server.base, live_server.token
    for repo in MIRROR_REPOS[:-1]:
        status, body = http("POST", f"{base}/api/v1/repository/{repo}/mirror", token,
                            mirror_config(f"{ORG}+mirrorbot"))
        assert status == 201, (repo, status, body)
    status, document = http("GET", f"{base}/api/v1/discovery")
    assert status == 200
    operations = sum(1 for item in document["paths"].values() for m in item if m != "parameters")

    started = time.monotonic()
    results = []
    for name, doc, examples, budget, seed in (
        ("narrowed", narrowed(document), 30, TIME_BUDGET * 6 // 10, 20261127),
        ("served", document, 15, TIME_BUDGET * 4 // 10, 11272026),
    ):
        code, sent, output = run_schemathesis(doc, base, token, tmp_path / name, examples, budget, seed)
        results.append((name, code, sent, output))
    took = time.monotonic() - started
    total = sum(sent for _name, _code, sent, _output in results)
    summary = ", ".join(f"{name}: {sent} requests, exit {code}" for name, code, sent, _o in results)
    print(f"\nfuzzing: {operations} operations, {total} requests in {took:.1f}s ({summary})")
    for name, code, _sent, output in results:
        errors = [line for line in live_server.output
                  if '" 5' in line or "Traceback" in line or "unavailable" in line or "rror" in line][-50:]
        tail = "\n".join(line[:300] for line in output.splitlines()[-300:])
        assert code == 0, f"schemathesis ({name}) found failures:\n{tail}\n--- server errors\n" + "\n".join(errors)
    assert total >= MIN_REQUESTS, summary
    assert not [line for line in live_server.output if "Traceback" in line or "unhandled error" in line], \
        live_server.log()
    configs = check_consistency(live_server.database_url)
    print(f"database consistent: {configs} mirror configurations checked")
    assert configs >= MIN_SURVIVING_CONFIGS
