"""Migrations: upgrade, downgrade and upgrade again on a fresh database; models and migrations agree.

Run on SQLite and on PostgreSQL, each test on a database of its own, through alembic's API and
through the ``alembic`` command of the README (alembic.ini at the repository root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from quaymirror import db as dbmod
from quaymirror.models import Base
from tests.common.migrations import current_revision, head

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC = Path(sys.executable).with_name("alembic")


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def model_tables() -> set[str]:
    return set(Base.metadata.tables)


def test_one_linear_history():
    script = ScriptDirectory.from_config(dbmod.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"


def test_upgrade_downgrade_upgrade(empty_database_url):
    url = empty_database_url
    dbmod.upgrade(url)
    assert current_revision(url) == head()
    assert tables(url) >= model_tables()
    dbmod.downgrade(url, "base")
    assert current_revision(url) is None
    assert tables(url) <= {"alembic_version"}
    dbmod.upgrade(url)
    assert current_revision(url) == head()
    assert tables(url) >= model_tables()


def test_each_revision_downgrades_one_step(empty_database_url):
    """Every revision's downgrade works from its own schema, not only all the way from head."""
    url = empty_database_url
    script = ScriptDirectory.from_config(dbmod.alembic_config(url))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    for revision in revisions:
        dbmod.upgrade(url, revision)
        assert current_revision(url) == revision
    for previous in reversed([None, *revisions[:-1]]):
        dbmod.downgrade(url, previous or "base")
        assert current_revision(url) == previous


def test_models_and_migrations_agree(empty_database_url):
    """No pending autogenerate diff: every model change comes with its migration."""
    dbmod.upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], "\n".join(map(str, diff))


def test_migrated_schema_is_usable(empty_database_url):
    """A smoke run of the foundation on a database built by the migrations alone."""
    from quaymirror.accounts import service as accounts
    from quaymirror.auth.tokens import issue, lookup
    from quaymirror.repositories import service as repositories
    from quaymirror.repositories.models import RepositoryState
    from quaymirror.security.secrets import SecretBox

    dbmod.upgrade(empty_database_url)
    database = dbmod.Database(empty_database_url)
    try:
        with database.transaction() as s:
            user = accounts.create_user(s, "alice", "alice@example.com")
            org = accounts.create_organization(s, "acme", user)
            accounts.create_robot(s, SecretBox("k"), org, "bot")
            repo = repositories.create(s, org, "app", state=RepositoryState.MIRROR)
            repositories.set_permission(s, repo, accounts.get_robot(s, "acme+bot"), "write")
            raw = issue(s, user, frozenset({"repo:admin"}), 60)
        with database.transaction() as s:
            assert lookup(s, raw).user.username == "alice"
            assert repositories.get(s, org, "app").state == RepositoryState.MIRROR
    finally:
        database.dispose()


def alembic_cli(*args: str, url: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}
    environment.update(env or {}, QUAYMIRROR_DATABASE_URL=url)
    return subprocess.run([str(ALEMBIC), *args], check=False, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_alembic_command_upgrade_downgrade(empty_database_url, tmp_path):
    """`alembic upgrade head` / `alembic downgrade base` as written, with the URL from the environment."""
    url = empty_database_url
    up = alembic_cli("upgrade", "head", url=url, env={"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "instance")})
    assert up.returncode == 0, up.stderr
    assert current_revision(url) == head()
    down = alembic_cli("downgrade", "base", url=url, env={"QUAYMIRROR_INSTANCE_PATH": str(tmp_path / "instance")})
    assert down.returncode == 0, down.stderr
    assert current_revision(url) is None
    again = alembic_cli("upgrade", "head", url=url)
    assert again.returncode == 0, again.stderr
    assert current_revision(url) == head()
    # Reading the URL must not create a secret key (or anything else) in an instance folder.
    assert not (tmp_path / "instance").exists()


def test_alembic_command_on_the_embedded_default(tmp_path):
    """No URL at all: the SQLite file in QUAYMIRROR_INSTANCE_PATH, folder created, no secret key written."""
    instance = tmp_path / "instance"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QUAYMIRROR_")}
    environment["QUAYMIRROR_INSTANCE_PATH"] = str(instance)
    result = subprocess.run([str(ALEMBIC), "upgrade", "head"], check=False, cwd=ROOT, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert current_revision(f"sqlite:///{instance / 'quaymirror.db'}") == head()
    assert sorted(p.name for p in instance.iterdir()) == ["quaymirror.db"]
