"""mirror architecture filter: the filter each owned tag was stored with, the platforms a tag's copy chose,
the upstream digest of a tag stored under another one, and the run's count of single images the filter left out

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 05:15:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('repomirrortag', schema=None) as batch_op:
        batch_op.add_column(sa.Column('architectures', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('upstream_digest', sa.String(length=80), nullable=True))
    with op.batch_alter_table('repomirrorsynctag', schema=None) as batch_op:
        batch_op.add_column(sa.Column('platforms', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('upstream_digest', sa.String(length=80), nullable=True))
    with op.batch_alter_table('repomirrorsyncrun', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tags_filtered', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('repomirrorsyncrun', schema=None) as batch_op:
        batch_op.drop_column('tags_filtered')
    with op.batch_alter_table('repomirrorsynctag', schema=None) as batch_op:
        batch_op.drop_column('upstream_digest')
        batch_op.drop_column('platforms')
    with op.batch_alter_table('repomirrortag', schema=None) as batch_op:
        batch_op.drop_column('upstream_digest')
        batch_op.drop_column('architectures')
