"""repository notifications, their delivery outbox and attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 17:52:37.118208
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('repositorynotification',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('repository_id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('method', sa.String(length=32), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=True),
    sa.Column('config_json', sa.Text(), nullable=False),
    sa.Column('event_config_json', sa.Text(), nullable=False),
    sa.Column('number_of_failures', sa.Integer(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['repository_id'], ['repository.id'], name=op.f('fk_repositorynotification_repository_id_repository'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repositorynotification')),
    sa.UniqueConstraint('uuid', name=op.f('uq_repositorynotification_uuid'))
    )
    with op.batch_alter_table('repositorynotification', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_repositorynotification_repository_id'), ['repository_id'], unique=False)

    op.create_table('notificationdelivery',
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('event', sa.String(length=64), nullable=False),
    sa.Column('payload_json', sa.Text(), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.Column('state', sa.Integer(), nullable=False),
    sa.Column('available_after', sa.DateTime(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sa.String(length=255), nullable=True),
    sa.Column('lease_expires', sa.DateTime(), nullable=True),
    sa.Column('finished', sa.DateTime(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['notification_id'], ['repositorynotification.id'], name=op.f('fk_notificationdelivery_notification_id_repositorynotification'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notificationdelivery')),
    sa.UniqueConstraint('uuid', name=op.f('uq_notificationdelivery_uuid'))
    )
    with op.batch_alter_table('notificationdelivery', schema=None) as batch_op:
        batch_op.create_index('ix_notificationdelivery_due', ['state', 'available_after'], unique=False)
        batch_op.create_index(batch_op.f('ix_notificationdelivery_notification_id'), ['notification_id'], unique=False)

    op.create_table('notificationattempt',
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('attempted', sa.DateTime(), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=1024), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['notificationdelivery.id'], name=op.f('fk_notificationattempt_delivery_id_notificationdelivery'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['notification_id'], ['repositorynotification.id'], name=op.f('fk_notificationattempt_notification_id_repositorynotification'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notificationattempt'))
    )
    with op.batch_alter_table('notificationattempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notificationattempt_delivery_id'), ['delivery_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notificationattempt_notification_id'), ['notification_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('notificationattempt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notificationattempt_notification_id'))
        batch_op.drop_index(batch_op.f('ix_notificationattempt_delivery_id'))

    op.drop_table('notificationattempt')
    with op.batch_alter_table('notificationdelivery', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notificationdelivery_notification_id'))
        batch_op.drop_index('ix_notificationdelivery_due')

    op.drop_table('notificationdelivery')
    with op.batch_alter_table('repositorynotification', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_repositorynotification_repository_id'))

    op.drop_table('repositorynotification')
