"""mirror ready index: the worker's due scan and next start read a partial index in order

Replaces ix_repomirrorconfig_due (sync_status, sync_start_date) with the partial
ix_repomirrorconfig_ready (sync_status, sync_start_date, id), limited to the mirrors
Quay's "ready" filter can select (retries left, no lease, enabled).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 05:10:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# Written as the models render it: SQLite uses a partial index only when the query repeats these terms.
READY_SQLITE = 'sync_retries_remaining > 0 AND sync_expiration_date IS NULL AND is_enabled IS 1'
READY_POSTGRESQL = 'sync_retries_remaining > 0 AND sync_expiration_date IS NULL AND is_enabled IS true'


def upgrade() -> None:
    with op.batch_alter_table('repomirrorconfig', schema=None) as batch_op:
        batch_op.drop_index('ix_repomirrorconfig_due')
        batch_op.create_index('ix_repomirrorconfig_ready', ['sync_status', 'sync_start_date', 'id'], unique=False,
                              sqlite_where=sa.text(READY_SQLITE), postgresql_where=sa.text(READY_POSTGRESQL))


def downgrade() -> None:
    with op.batch_alter_table('repomirrorconfig', schema=None) as batch_op:
        batch_op.drop_index('ix_repomirrorconfig_ready')
        batch_op.create_index('ix_repomirrorconfig_due', ['sync_status', 'sync_start_date'], unique=False)
