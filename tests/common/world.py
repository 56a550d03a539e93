"""Quay's test fixtures (initdb) as a ``world``: users, an org, robots, repositories, tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from quaymirror import db as dbmod
from tests.common.database import TEST_SECRET, WORLD_SEED, Seed, seed_postgres, seed_sqlite


@dataclass
class World:
    """Quay's test fixtures (initdb): users, an org, robots, repositories and one token per scope set."""

    database: dbmod.Database
    secret_key: str
    tokens: dict[str, str] = field(default_factory=dict)
    robot_tokens: dict[str, str] = field(default_factory=dict)

    def user(self, name: str, superuser: bool = False):
        from quaymirror.accounts import service as accounts

        with self.database.transaction() as s:
            return accounts.create_user(s, name, f"{name}@example.com", superuser)

    def org(self, name: str, owner: str, members: tuple[str, ...] = ()):
        from quaymirror.accounts import service as accounts
        from quaymirror.accounts.models import OrganizationMember

        with self.database.transaction() as s:
            org = accounts.create_organization(s, name, accounts.get_by_name(s, owner))
            for member in members:
                s.add(OrganizationMember(organization_id=org.id, user_id=accounts.get_by_name(s, member).id,
                                         role="member"))
            return org

    def robot(self, full_name: str) -> str:
        from quaymirror.accounts import service as accounts
        from quaymirror.security.secrets import SecretBox

        ns, short = full_name.split("+")
        with self.database.transaction() as s:
            _robot, token = accounts.create_robot(s, SecretBox(self.secret_key), accounts.get_by_name(s, ns), short)
        self.robot_tokens[full_name] = token
        return token

    def repo(self, path: str, state: str = "NORMAL", visibility: str = "private"):
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories
        from quaymirror.repositories.models import RepositoryState

        ns, name = path.split("/")
        with self.database.transaction() as s:
            return repositories.create(s, accounts.get_by_name(s, ns), name, visibility=visibility,
                                       state=RepositoryState[state])

    def grant(self, who: str, path: str, role: str) -> None:
        from quaymirror.accounts import service as accounts
        from quaymirror.repositories import service as repositories

        ns, name = path.split("/")
        with self.database.transaction() as s:
            repo = repositories.get(s, accounts.get_by_name(s, ns), name)
            repositories.set_permission(s, repo, accounts.get_by_name(s, who), role)

    def token(self, label: str, owner: str, scopes: str, expires_in: int | None = None) -> str:
        from quaymirror.accounts import service as accounts
        from quaymirror.auth import scopes as scope_names
        from quaymirror.auth.tokens import issue

        with self.database.transaction() as s:
            raw = issue(s, accounts.get_by_name(s, owner), scope_names.parse(scopes), expires_in)
        self.tokens[label] = raw
        return raw

    def headers(self, label: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[label]}"} if label else {}


def build_world(database: dbmod.Database) -> World:
    """The fixture set of Quay's recorded exchanges (see tests/mirror/test_api_quay_captures.py)."""
    w = World(database, TEST_SECRET)
    w.user("devtable", superuser=True)
    w.user("reader")
    w.user("freshuser")
    w.repo("devtable/simple")
    w.robot("devtable+dtrobot")
    w.robot("devtable+dtrobot2")
    w.org("buynlarge", owner="freshuser")
    w.robot("buynlarge+coolrobot")
    w.token("admin", "devtable", "repo:admin")
    w.token("read", "devtable", "repo:read")
    w.token("write", "devtable", "repo:write")
    w.token("reader", "reader", "repo:admin")
    w.token("fresh", "freshuser", "repo:admin")
    return w


def _raw_tokens(world: World) -> tuple[dict[str, str], dict[str, str]]:
    return dict(world.tokens), dict(world.robot_tokens)


@pytest.fixture(scope="session")
def sqlite_world(sqlite_template, tmp_path_factory) -> Seed[tuple[dict[str, str], dict[str, str]]]:
    """The world built once in a copy of the SQLite template, and its raw tokens."""
    path = tmp_path_factory.mktemp("sqlite-world") / "world.db"
    return seed_sqlite(sqlite_template, path, lambda database: _raw_tokens(build_world(database)))


@pytest.fixture(scope="session")
def postgresql_world(postgres_url) -> Seed[tuple[dict[str, str], dict[str, str]]]:
    """The world built once in the session's PostgreSQL database, its rows and its raw tokens."""
    return seed_postgres(postgres_url, lambda database: _raw_tokens(build_world(database)))


@pytest.fixture
def world(request, database) -> World:
    """Quay's initdb fixtures in the test's database. ``database_url`` made that database with the world's
    rows already in it (the raw tokens come with them); a test module whose ``database_url`` is its own
    (the end-to-end servers' database) gets them built here."""
    seed = request.node.stash.get(WORLD_SEED, None)
    if seed is None:
        return build_world(database)
    tokens, robot_tokens = seed.made
    return World(database, TEST_SECRET, dict(tokens), dict(robot_tokens))
