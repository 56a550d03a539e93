"""mirror worker heartbeat: one row per live worker process, so the mirror health counts the workers alive

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('repomirrorworker',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner', sa.String(length=255), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('started', sa.DateTime(), nullable=False),
    sa.Column('heartbeat', sa.DateTime(), nullable=False),
    sa.Column('expires', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repomirrorworker')),
    sa.UniqueConstraint('owner', name=op.f('uq_repomirrorworker_owner'))
    )
    with op.batch_alter_table('repomirrorworker', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_repomirrorworker_expires'), ['expires'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('repomirrorworker', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_repomirrorworker_expires'))

    op.drop_table('repomirrorworker')
