"""read cache notify: PostgreSQL triggers announce every write to the tables GET /mirror reads

Statement-level triggers on the seven tables of GET /mirror's statement run
pg_notify('quaymirror_changed', ''), so each API process empties its read cache
(quaymirror.db.ReadCache) whoever wrote: another replica, a worker, psql. Nothing
on SQLite, which has no cache.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:20:00.000000
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

TABLES = ('user', 'oauthaccesstoken', 'repository', 'organizationmember', 'repositorypermission',
          'repomirrorconfig', 'repomirrorrule')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    # One payload for every write: PostgreSQL folds equal notifications of a transaction into one.
    op.execute("""
        CREATE FUNCTION quaymirror_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('quaymirror_changed', '');
            RETURN NULL;
        END $$
    """)
    for table in TABLES:
        op.execute(f'CREATE TRIGGER quaymirror_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON "{table}" '
                   f'FOR EACH STATEMENT EXECUTE FUNCTION quaymirror_changed()')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        op.execute(f'DROP TRIGGER quaymirror_changed ON "{table}"')
    op.execute('DROP FUNCTION quaymirror_changed()')
