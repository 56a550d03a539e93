"""organization mirror: the configuration (one per organization) and the repositories its discovery found

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:17:37.463003
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('orgmirrorconfig',
    sa.Column('organization_id', sa.Integer(), nullable=False),
    sa.Column('creation_date', sa.DateTime(), nullable=False),
    sa.Column('is_enabled', sa.Boolean(), nullable=False),
    sa.Column('mirror_type', sa.Integer(), nullable=False),
    sa.Column('external_registry_type', sa.Integer(), nullable=False),
    sa.Column('external_registry_url', sa.String(length=2048), nullable=False),
    sa.Column('external_namespace', sa.String(length=255), nullable=False),
    sa.Column('external_registry_username', sa.String(length=4096), nullable=True),
    sa.Column('external_registry_password', sa.String(length=9000), nullable=True),
    sa.Column('external_registry_config', sa.Text(), nullable=False),
    sa.Column('internal_robot_id', sa.Integer(), nullable=False),
    sa.Column('repository_filters', sa.Text(), nullable=False),
    sa.Column('architecture_filter', sa.Text(), nullable=False),
    sa.Column('visibility', sa.String(length=16), nullable=False),
    sa.Column('delete_stale_repos', sa.Boolean(), nullable=False),
    sa.Column('sync_interval', sa.Integer(), nullable=False),
    sa.Column('sync_start_date', sa.DateTime(), nullable=True),
    sa.Column('sync_expiration_date', sa.DateTime(), nullable=True),
    sa.Column('sync_retries_remaining', sa.Integer(), nullable=False),
    sa.Column('sync_status', sa.Integer(), nullable=False),
    sa.Column('sync_transaction_id', sa.String(length=36), nullable=True),
    sa.Column('skopeo_timeout', sa.BigInteger(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['internal_robot_id'], ['user.id'], name=op.f('fk_orgmirrorconfig_internal_robot_id_user')),
    sa.ForeignKeyConstraint(['organization_id'], ['user.id'], name=op.f('fk_orgmirrorconfig_organization_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orgmirrorconfig')),
    sa.UniqueConstraint('organization_id', name=op.f('uq_orgmirrorconfig_organization_id'))
    )
    with op.batch_alter_table('orgmirrorconfig', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orgmirrorconfig_internal_robot_id'), ['internal_robot_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orgmirrorconfig_sync_start_date'), ['sync_start_date'], unique=False)
        batch_op.create_index(batch_op.f('ix_orgmirrorconfig_sync_status'), ['sync_status'], unique=False)

    op.create_table('orgmirrorrepository',
    sa.Column('org_mirror_config_id', sa.Integer(), nullable=False),
    sa.Column('repository_name', sa.String(length=255), nullable=False),
    sa.Column('repository_id', sa.Integer(), nullable=True),
    sa.Column('discovery_date', sa.DateTime(), nullable=False),
    sa.Column('sync_status', sa.Integer(), nullable=False),
    sa.Column('sync_start_date', sa.DateTime(), nullable=True),
    sa.Column('sync_expiration_date', sa.DateTime(), nullable=True),
    sa.Column('last_sync_date', sa.DateTime(), nullable=True),
    sa.Column('status_message', sa.Text(), nullable=True),
    sa.Column('creation_date', sa.DateTime(), nullable=False),
    sa.Column('sync_retries_remaining', sa.Integer(), nullable=False),
    sa.Column('sync_transaction_id', sa.String(length=36), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['org_mirror_config_id'], ['orgmirrorconfig.id'], name=op.f('fk_orgmirrorrepository_org_mirror_config_id_orgmirrorconfig'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['repository_id'], ['repository.id'], name=op.f('fk_orgmirrorrepository_repository_id_repository'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orgmirrorrepository')),
    sa.UniqueConstraint('org_mirror_config_id', 'repository_name', name=op.f('uq_orgmirrorrepository_org_mirror_config_id_repository_name'))
    )
    with op.batch_alter_table('orgmirrorrepository', schema=None) as batch_op:
        batch_op.create_index('ix_orgmirrorrepository_config_status', ['org_mirror_config_id', 'sync_status'], unique=False)
        batch_op.create_index(batch_op.f('ix_orgmirrorrepository_org_mirror_config_id'), ['org_mirror_config_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orgmirrorrepository_repository_id'), ['repository_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orgmirrorrepository_sync_status'), ['sync_status'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('orgmirrorrepository', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orgmirrorrepository_sync_status'))
        batch_op.drop_index(batch_op.f('ix_orgmirrorrepository_repository_id'))
        batch_op.drop_index(batch_op.f('ix_orgmirrorrepository_org_mirror_config_id'))
        batch_op.drop_index('ix_orgmirrorrepository_config_status')

    op.drop_table('orgmirrorrepository')
    with op.batch_alter_table('orgmirrorconfig', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orgmirrorconfig_sync_status'))
        batch_op.drop_index(batch_op.f('ix_orgmirrorconfig_sync_start_date'))
        batch_op.drop_index(batch_op.f('ix_orgmirrorconfig_internal_robot_id'))

    op.drop_table('orgmirrorconfig')
