"""The ``quaymirror`` command: each command in-process through ``main([...])`` on SQLite and PostgreSQL,
and each at least once as a real process.

Contract: a command that creates something prints only what a script needs on stdout; errors go to
stderr with a non-zero exit code (1 for errors, 2 for usage errors), never a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from select import select as selectors_select

import pytest
from sqlalchemy import select

from quaymirror import cli
from quaymirror.accounts.models import OrganizationMember, User
from quaymirror.auth.models import AccessToken
from quaymirror.auth.tokens import hash_token
from quaymirror.db import utcnow
from quaymirror.repositories.models import Repository, RepositoryPermission, RepositoryState
from quaymirror.security.secrets import SecretBox
from tests.common.database import TEST_SECRET


@pytest.fixture
def env(monkeypatch, tmp_path, database_url):
    """The CLI's environment: a temp instance folder and the test's database (SQLite or PostgreSQL)."""
    for name in [n for n in os.environ if n.startswith("QUAYMIRROR_")]:
        monkeypatch.delenv(name)
    values = {
        "QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "cli-instance"),
        "QUAYMIRROR_DATABASE_URL": database_url,
        "QUAYMIRROR_SECRET_KEY": TEST_SECRET,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def run(env, capsys):
    """``run("user", "create", "x")`` -> (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return invoke


def ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, err
    return out


def fails(result: tuple[int, str, str], message: str, code: int = 1) -> str:
    exit_code, out, err = result
    assert (exit_code, out) == (code, ""), (message, out, err)
    assert message in err, (message, err)
    return err


@pytest.fixture
def people(run):
    ok(run("user", "create", "alice", "--email", "alice@example.com"))
    ok(run("user", "create", "bob"))
    ok(run("org", "create", "acme", "--owner", "alice"))
    ok(run("repo", "create", "acme/app"))
    return run


def one(database, model, *where):
    with database.transaction() as s:
        return s.scalars(select(model).where(*where)).one()


# --- db upgrade -------------------------------------------------------------------------------

def test_db_upgrade(run, env):
    code, out, err = run("db", "upgrade")
    assert (code, out) == (0, "")
    assert "latest revision" in err
    assert ok(run("db", "upgrade")) == ""  # again: nothing to do


def test_db_upgrade_on_an_empty_database(empty_database_url, run, monkeypatch):
    from tests.common.migrations import current_revision, head

    monkeypatch.setenv("QUAYMIRROR_DATABASE_URL", empty_database_url)
    assert ok(run("db", "upgrade")) == ""
    assert current_revision(empty_database_url) == head()


def test_db_upgrade_with_the_database_away(run, monkeypatch):
    monkeypatch.setenv("QUAYMIRROR_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/nothing")
    fails(run("db", "upgrade"), "quaymirror: error: OperationalError")


# --- user create ------------------------------------------------------------------------------

def test_user_create(run, database):
    assert ok(run("user", "create", "alice", "--email", "alice@example.com", "--superuser")) == "alice\n"
    alice = one(database, User, User.username == "alice")
    assert (alice.email, alice.is_superuser, alice.is_organization, alice.is_robot) == \
        ("alice@example.com", True, False, False)
    assert ok(run("user", "create", "bob")) == "bob\n"
    bob = one(database, User, User.username == "bob")
    assert (bob.email, bob.is_superuser) == (None, False)


USER_CREATE_ERRORS = [
    (["user", "create", "devtable"], "already exists"),
    (["user", "create", "Bad Name"], "Invalid namespace name"),
    (["user", "create", "x"], "Invalid namespace name"),
    (["user", "create", "alice", "--email", "not-an-email"], "Invalid email address"),
]


def test_user_create_errors(run, world):
    for argv, message in USER_CREATE_ERRORS:
        fails(run(*argv), message)


# --- org create -------------------------------------------------------------------------------

def test_org_create(run, world, database):
    assert ok(run("org", "create", "acme", "--owner", "reader")) == "acme\n"
    org = one(database, User, User.username == "acme")
    assert org.is_organization
    member = one(database, OrganizationMember, OrganizationMember.organization_id == org.id)
    assert member.role == "admin"
    assert one(database, User, User.id == member.user_id).username == "reader"


ORG_CREATE_ERRORS = [
    (["org", "create", "acme", "--owner", "nobody"], "no such user, organization or robot: nobody", 1),
    (["org", "create", "buynlarge", "--owner", "reader"], "already exists", 1),
    (["org", "create", "devtable", "--owner", "reader"], "already exists", 1),
    (["org", "create", "acme", "--owner", "devtable+dtrobot"], "must be owned by a user", 1),
    (["org", "create", "acme", "--owner", "buynlarge"], "must be owned by a user", 1),
    (["org", "create", "acme"], "--owner", 2),
]


def test_org_create_errors(run, world):
    for argv, message, code in ORG_CREATE_ERRORS:
        fails(run(*argv), message, code)


# --- repo create ------------------------------------------------------------------------------

def test_repo_create(run, world, database):
    assert ok(run("repo", "create", "devtable/plain")) == "devtable/plain\n"
    assert one(database, Repository, Repository.name == "plain").state == RepositoryState.NORMAL
    assert ok(run("repo", "create", "buynlarge/mirrored", "--state", "MIRROR")) == "buynlarge/mirrored\n"
    mirrored = one(database, Repository, Repository.name == "mirrored")
    assert mirrored.state == RepositoryState.MIRROR
    assert one(database, User, User.id == mirrored.namespace_id).username == "buynlarge"
    ok(run("repo", "create", "devtable/ro", "--state", "READ_ONLY"))
    assert one(database, Repository, Repository.name == "ro").state == RepositoryState.READ_ONLY


REPO_CREATE_ERRORS = [
    (["repo", "create", "noslash"], "NAMESPACE/NAME", 1),
    (["repo", "create", "a/b/c"], "NAMESPACE/NAME", 1),
    (["repo", "create", "nobody/app"], "no such user, organization or robot: nobody", 1),
    (["repo", "create", "devtable/simple"], "Repository already exists", 1),
    (["repo", "create", "devtable/Bad"], "Invalid repository name", 1),
    (["repo", "create", "devtable/"], "Invalid repository name", 1),
    (["repo", "create", "devtable+dtrobot/app"], "robots cannot own repositories", 1),
    (["repo", "create", "devtable/app", "--state", "BOGUS"], "invalid choice", 2),
]


def test_repo_create_errors(run, world):
    for argv, message, code in REPO_CREATE_ERRORS:
        fails(run(*argv), message, code)


# --- robot create -----------------------------------------------------------------------------

def test_robot_create_prints_only_the_token(run, world, database):
    out = ok(run("robot", "create", "buynlarge+builder"))
    token = out.strip()
    assert out == token + "\n" and len(token) >= 32
    robot = one(database, User, User.username == "buynlarge+builder")
    assert robot.is_robot
    assert SecretBox(TEST_SECRET).decrypt(robot.robot_token) == token
    assert one(database, User, User.id == robot.robot_namespace_id).username == "buynlarge"


ROBOT_CREATE_ERRORS = [
    (["robot", "create", "devtable"], "NAMESPACE+SHORTNAME"),
    (["robot", "create", "a+b+c"], "NAMESPACE+SHORTNAME"),
    (["robot", "create", "nobody+bot"], "no such user, organization or robot: nobody"),
    (["robot", "create", "devtable+dtrobot"], "Existing robot with name: devtable+dtrobot"),
    (["robot", "create", "devtable+Bad"], "Invalid robot account shortname"),
    (["robot", "create", "devtable+"], "Invalid robot account shortname"),
]


def test_robot_create_errors(run, world):
    for argv, message in ROBOT_CREATE_ERRORS:
        fails(run(*argv), message)


# --- permission grant -------------------------------------------------------------------------

def test_permission_grant(run, world, database):
    assert ok(run("permission", "grant", "reader", "devtable/simple", "write")) == ""
    assert ok(run("permission", "grant", "devtable+dtrobot", "devtable/simple", "read")) == ""
    with database.transaction() as s:
        roles = {p.user.username: p.role for p in s.scalars(select(RepositoryPermission))}
    assert roles == {"reader": "write", "devtable+dtrobot": "read"}
    ok(run("permission", "grant", "reader", "devtable/simple", "admin"))  # replaces the role
    with database.transaction() as s:
        roles = {p.user.username: p.role for p in s.scalars(select(RepositoryPermission))}
    assert roles == {"reader": "admin", "devtable+dtrobot": "read"}


PERMISSION_GRANT_ERRORS = [
    (["permission", "grant", "nobody", "devtable/simple", "read"], "no such user, organization or robot: nobody", 1),
    (["permission", "grant", "reader", "devtable/nosuchrepo", "read"], "no such repository: devtable/nosuchrepo", 1),
    (["permission", "grant", "reader", "nobody/simple", "read"], "no such user, organization or robot: nobody", 1),
    (["permission", "grant", "reader", "simple", "read"], "NAMESPACE/NAME", 1),
    (["permission", "grant", "buynlarge+coolrobot", "devtable/simple", "read"], "different namespace", 1),
    (["permission", "grant", "buynlarge", "devtable/simple", "read"], "Invalid username", 1),
    (["permission", "grant", "reader", "devtable/simple", "owner"], "invalid choice", 2),
]


def test_permission_grant_errors(run, world):
    for argv, message, code in PERMISSION_GRANT_ERRORS:
        fails(run(*argv), message, code)


# --- token create -----------------------------------------------------------------------------

def test_token_create_prints_only_a_token_that_authenticates(run, world, app):
    out = ok(run("token", "create", "--user", "reader", "--scope", "repo:read", "--scope", "user:admin"))
    token = out.strip()
    assert out == token + "\n" and " " not in token
    client = app.test_client()
    response = client.get("/api/v1/user/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.get_json()["username"] == "reader"
    # Scopes as given: user:admin lets it create its own robot, repo:read gives no admin anywhere.
    assert client.put("/api/v1/user/robots/bot", headers={"Authorization": f"Bearer {token}"},
                      json={}).status_code == 201
    world.grant("reader", "devtable/simple", "admin")
    assert client.delete("/api/v1/repository/devtable/simple",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 403


def test_token_create_stores_only_a_hash(run, world, database):
    token = ok(run("token", "create", "--user", "devtable", "--scope", "repo:admin,repo:create")).strip()
    stored = one(database, AccessToken, AccessToken.token_hash == hash_token(token))
    assert stored.scope == "repo:admin repo:create"
    assert stored.expires_at is None
    with database.transaction() as s:
        assert all(token not in (t.token_hash + t.scope) for t in s.scalars(select(AccessToken)))


def test_token_create_with_expiry(run, world, database, app):
    before = utcnow()
    token = ok(run("token", "create", "--user", "devtable", "--scope", "repo:admin", "--expires-in", "3600")).strip()
    stored = one(database, AccessToken, AccessToken.token_hash == hash_token(token))
    assert before + timedelta(seconds=3590) <= stored.expires_at <= utcnow() + timedelta(seconds=3600)
    headers = {"Authorization": f"Bearer {token}"}
    assert app.test_client().get("/api/v1/user/", headers=headers).status_code == 200
    with database.transaction() as s:  # an hour later
        s.scalars(select(AccessToken).where(AccessToken.id == stored.id)).one().expires_at = \
            utcnow() - timedelta(seconds=1)
    response = app.test_client().get("/api/v1/user/", headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error_type"] == "invalid_token"


def test_token_for_a_robot(run, world, app):
    world.grant("devtable+dtrobot", "devtable/simple", "read")
    token = ok(run("token", "create", "--user", "devtable+dtrobot", "--scope", "repo:read")).strip()
    response = app.test_client().get("/api/v1/repository/devtable/simple", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


TOKEN_CREATE_ERRORS = [
    (["token", "create", "--user", "nobody", "--scope", "repo:read"], "no such user, organization or robot", 1),
    (["token", "create", "--user", "devtable", "--scope", "repo:everything"], "Unknown scope: repo:everything", 1),
    (["token", "create", "--user", "devtable", "--scope", "repo:read", "--scope", "bogus"], "known scopes:", 1),
    (["token", "create", "--user", "devtable", "--scope", ""], "at least one --scope", 1),
    (["token", "create", "--user", "devtable", "--scope", "repo:read", "--expires-in", "0"], "positive", 1),
    (["token", "create", "--user", "devtable", "--scope", "repo:read", "--expires-in", "-5"], "positive", 1),
    (["token", "create", "--user", "devtable", "--scope", "repo:read", "--expires-in", "soon"], "invalid int", 2),
    (["token", "create", "--user", "buynlarge", "--scope", "repo:read"], "not organizations", 1),
    (["token", "create", "--user", "devtable"], "--scope", 2),
    (["token", "create", "--scope", "repo:read"], "--user", 2),
]


def test_token_create_errors(run, world):
    for argv, message, code in TOKEN_CREATE_ERRORS:
        fails(run(*argv), message, code)


# --- usage, settings ------------------------------------------------------------------------

def one_line_error(result: tuple[int, str, str], code: int = 2) -> str:
    """The single stderr line of a refused command (no usage dump, no traceback)."""
    exit_code, out, err = result
    assert (exit_code, out) == (code, ""), err
    assert len(err.splitlines()) == 1 and err.startswith("quaymirror: error: "), err
    return err.strip()


@pytest.mark.parametrize(("argv", "help_of"), [
    ([], "quaymirror"), (["nothing"], "quaymirror"), (["user"], "quaymirror user"),
    (["user", "delete", "x"], "quaymirror user"), (["db"], "quaymirror db"),
    (["serve", "--port", "80800"], "quaymirror serve"),
])
def test_usage_errors_exit_2(argv, help_of, run):
    assert one_line_error(run(*argv)).endswith(f"(see '{help_of} --help')")


@pytest.mark.parametrize(("raw", "shown"), [("80800", "'80800'"), ("-1", "'-1'"), ("http", "'http'"), ("", "''")])
def test_serve_port_out_of_range_is_a_usage_error(raw, shown, run, monkeypatch):
    import quaymirror.server

    monkeypatch.setattr(quaymirror.server, "serve", lambda *a, **kw: pytest.fail("serve started"))
    line = one_line_error(run("serve", "--port", raw))
    assert line.startswith(f"quaymirror: error: argument --port: {shown} is not a port number (0-65535)"), line


def test_help_exits_0(run):
    code, out, _err = run("--help")
    assert code == 0
    for command in ("db", "user", "org", "repo", "robot", "permission", "token", "serve", "worker"):
        assert command in out


def test_version(run):
    from importlib.metadata import version

    code, out, err = run("--version")
    assert (code, out, err) == (0, f"quaymirror {version('quaymirror')}\n", "")


def _parsers(parser, path=("quaymirror",)):
    """Every (command path, parser, help given for it by its parent) of the command tree."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_explains_itself():
    """Every command and subcommand has help; every option says what it is, its default and its choices."""
    import argparse

    parser = cli.build_parser()
    assert "``" not in parser.format_help() and ":func:" not in parser.format_help()
    tree = list(_parsers(parser))
    assert {" ".join(path) for path, _sub, _help in tree} >= {
        "quaymirror db upgrade", "quaymirror user create", "quaymirror org create", "quaymirror repo create",
        "quaymirror robot create", "quaymirror permission grant", "quaymirror token create",
        "quaymirror serve", "quaymirror worker"}
    for path, sub, help_text in tree:
        assert help_text, f"{' '.join(path)} has no help"
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        assert "``" not in text
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{' '.join(path)} {name} has no help"
            if action.choices:
                listed = ", ".join(str(choice) for choice in action.choices)
                assert listed in text, f"{' '.join(path)} {name} does not list its choices"
            if action.option_strings and not action.required:
                assert "default: " in action.help, f"{' '.join(path)} {name} does not say its default"
                if action.default not in (None, False):
                    assert f"(default: {action.default})" in text, f"{' '.join(path)} {name}: default"


def test_choices_come_from_the_code_that_checks_them(run):
    from quaymirror.auth.scopes import ALL_SCOPES
    from quaymirror.repositories.models import ROLES

    code, token_help, _err = run("token", "create", "--help")
    assert code == 0
    assert ", ".join(ALL_SCOPES) in " ".join(token_help.split())
    _code, grant_help, _err = run("permission", "grant", "--help")
    assert ", ".join(ROLES) in " ".join(grant_help.split())
    _code, repo_help, _err = run("repo", "create", "--help")
    assert "NORMAL, READ_ONLY, MIRROR (default: NORMAL)" in " ".join(repo_help.split())


def test_unusable_setting_is_an_error_not_a_traceback(run, monkeypatch):
    monkeypatch.setenv("QUAYMIRROR_SUPERUSERS_FULL_ACCESS", "maybe")
    assert one_line_error(run("user", "create", "alice")) == (
        "quaymirror: error: QUAYMIRROR_SUPERUSERS_FULL_ACCESS must be true or false, not 'maybe'")


@pytest.mark.parametrize(("name", "raw"), [("SKOPEO_TIMEOUT_MAX", "  "), ("API_WORKERS", "two"),
                                           ("LOG_LEVEL", "loud"), ("STORAGE", "s3://bucket")])
@pytest.mark.parametrize("command", [["serve"], ["worker"], ["user", "create", "alice"]])
def test_bad_setting_exits_2_before_the_command_starts(command, name, raw, run, monkeypatch):
    import quaymirror.server

    monkeypatch.setattr(quaymirror.server, "serve", lambda *a, **kw: pytest.fail("serve started"))
    monkeypatch.setattr(quaymirror.server, "run_worker", lambda *a, **kw: pytest.fail("worker started"))
    monkeypatch.setenv(f"QUAYMIRROR_{name}", raw)
    line = one_line_error(run(*command))
    assert line.startswith(f"quaymirror: error: QUAYMIRROR_{name} must be ") and line.endswith(repr(raw)), line


@pytest.mark.parametrize("command", [["serve"], ["worker"]])
def test_a_missing_skopeo_stops_the_commands_that_run_a_worker(command, run, monkeypatch, tmp_path):
    import quaymirror.server

    monkeypatch.setattr(quaymirror.server, "serve", lambda *a, **kw: pytest.fail("serve started"))
    monkeypatch.setattr(quaymirror.server, "run_worker", lambda *a, **kw: pytest.fail("worker started"))
    monkeypatch.setenv("QUAYMIRROR_SKOPEO", str(tmp_path / "no-skopeo"))
    assert one_line_error(run(*command)) == ("quaymirror: error: QUAYMIRROR_SKOPEO must be an executable "
                                             f"(a path, or a name on PATH), not '{tmp_path / 'no-skopeo'}'")


def test_instance_path_that_cannot_be_created(run, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("QUAYMIRROR_INSTANCE_PATH", str(blocker / "instance"))
    monkeypatch.delenv("QUAYMIRROR_SECRET_KEY")
    fails(run("user", "create", "alice"), "quaymirror: error:")


def test_embedded_default_migrates_itself(run, monkeypatch, tmp_path, env):
    """No database URL: every command keeps the embedded SQLite schema current on its own."""
    monkeypatch.delenv("QUAYMIRROR_DATABASE_URL")
    monkeypatch.delenv("QUAYMIRROR_SECRET_KEY")
    assert ok(run("user", "create", "alice")) == "alice\n"
    instance = tmp_path / "cli-instance"
    assert (instance / "quaymirror.db").exists() and (instance / "secret_key").exists()
    ok(run("robot", "create", "alice+bot"))


# --- serve and worker: the wiring (the real processes are in test_server.py and below) --------

@pytest.fixture
def fake_skopeo(tmp_path, monkeypatch) -> str:
    """An executable named skopeo first on PATH: the wiring tests need one to resolve, not to run."""
    program = tmp_path / "bin" / "skopeo"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{program.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(program)


def test_serve_passes_its_options(run, monkeypatch, fake_skopeo):
    import quaymirror.server

    listened, calls = [], []
    monkeypatch.setattr(quaymirror.server, "listen", lambda host, port: listened.append((host, port)) or "socket")
    monkeypatch.setattr(quaymirror.server, "serve", lambda settings, listener, **kw: calls.append((settings, kw)))
    assert ok(run("serve", "--host", "0.0.0.0", "--port", "9090", "--no-worker")) == ""
    assert (listened[0], calls[0][1]) == (("0.0.0.0", 9090), {"with_worker": False})
    assert calls[0][0].skopeo_path == "skopeo"  # the API alone needs no skopeo
    ok(run("serve"))
    assert (listened[1], calls[1][1]) == (("127.0.0.1", 8080), {"with_worker": True})
    assert calls[1][0].skopeo_path == fake_skopeo


def test_worker_runs_the_worker(run, monkeypatch, env, fake_skopeo):
    import quaymirror.server

    calls = []
    monkeypatch.setattr(quaymirror.server, "run_worker", lambda settings: calls.append(settings))
    assert ok(run("worker")) == ""
    assert calls[0].database_url == env["QUAYMIRROR_DATABASE_URL"]
    assert calls[0].skopeo_path == fake_skopeo


# --- real processes ---------------------------------------------------------------------------

def quaymirror(*argv: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quaymirror.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def console_script() -> str:
    return os.path.join(os.path.dirname(sys.executable), "quaymirror")


@pytest.fixture
def process_env(env) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}
    return {**clean, **env}


def test_every_command_as_a_real_process(process_env, app, world):
    """The whole setup a script does, then the printed token against the app."""
    steps = [
        (["db", "upgrade"], ""),
        (["user", "create", "alice", "--email", "alice@example.com"], "alice\n"),
        (["org", "create", "acme", "--owner", "alice"], "acme\n"),
        (["repo", "create", "acme/app", "--state", "MIRROR"], "acme/app\n"),
        (["permission", "grant", "reader", "acme/app", "read"], ""),
    ]
    for argv, expected in steps:
        result = quaymirror(*argv, env=process_env)
        assert (result.returncode, result.stdout) == (0, expected), (argv, result.stderr)
    robot = subprocess.run([console_script(), "robot", "create", "acme+mirror"], env=process_env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert robot.returncode == 0, robot.stderr
    assert len(robot.stdout.strip().splitlines()) == 1
    token = quaymirror("token", "create", "--user", "alice", "--scope", "repo:admin", "--scope", "org:admin",
                       env=process_env)
    assert token.returncode == 0, token.stderr
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    client = app.test_client()
    repo = client.get("/api/v1/repository/acme/app", headers=headers).get_json()
    assert (repo["state"], repo["can_admin"]) == ("MIRROR", True)
    robot_view = client.get("/api/v1/organization/acme/robots/mirror", headers=headers).get_json()
    assert robot_view["token"] == robot.stdout.strip()


@pytest.mark.parametrize("backend", ["sqlite"])  # the error paths do not depend on the database
def test_errors_as_a_real_process(process_env, world):
    for argv, message, code in [
        (["user", "create", "devtable"], "already exists", 1),
        (["token", "create", "--user", "devtable", "--scope", "bogus"], "Unknown scope", 1),
        (["repo", "create", "noslash"], "NAMESPACE/NAME", 1),
        (["token", "create", "--user", "nobody", "--scope", "repo:read"], "no such user", 1),
        (["bogus"], "quaymirror: error: argument COMMAND: invalid choice: 'bogus'", 2),
        (["serve", "--port", "80800"], "quaymirror: error: argument --port: '80800' is not a port number", 2),
    ]:
        result = quaymirror(*argv, env=process_env)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stdout == ""
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_worker_as_a_real_process(process_env):
    """``quaymirror worker`` keeps running until SIGTERM, then exits promptly."""
    process = subprocess.Popen([sys.executable, "-m", "quaymirror.cli", "worker"], env=process_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # SIGTERM only once it is running (its log says so): on a busy machine start-up takes seconds.
        deadline = time.monotonic() + 60
        seen = ""
        while "started" not in seen and time.monotonic() < deadline and process.poll() is None:
            if selectors_select([process.stderr], [], [], 0.5)[0]:
                seen += process.stderr.readline()
        assert process.poll() is None and "started" in seen, seen + process.communicate()[1]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
        assert process.returncode == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
