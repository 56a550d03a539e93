"""org mirror repository sync: a discovered repository is synced by a repository mirror configuration of its
own (claims, leases, history, digest skip), linked to its ``orgmirrorrepository`` row and deleted with it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:45:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('repomirrorconfig', schema=None) as batch_op:
        batch_op.add_column(sa.Column('org_mirror_repository_id', sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_repomirrorconfig_org_mirror_repository_id'),
                                          ['org_mirror_repository_id'])
        batch_op.create_foreign_key(
            batch_op.f('fk_repomirrorconfig_org_mirror_repository_id_orgmirrorrepository'), 'orgmirrorrepository',
            ['org_mirror_repository_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('repomirrorconfig', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_repomirrorconfig_org_mirror_repository_id_orgmirrorrepository'),
                                 type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_repomirrorconfig_org_mirror_repository_id'), type_='unique')
        batch_op.drop_column('org_mirror_repository_id')
