"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 21:16:18.142718
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import models.types


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_event_license_id'), ['license_id'], unique=False)

    op.create_table('batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('finished', sa.Integer(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('report_name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'sha256')
    )
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_batch_tenant'), ['tenant'], unique=False)

    op.create_table('customer',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_customer_code'), ['code'], unique=True)

    op.create_table('product',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('product', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_product_code'), ['code'], unique=True)

    op.create_table('job',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batch.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'sha256')
    )
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.create_index('ix_job_batch', ['batch_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_request_id'), ['request_id'], unique=False)
        batch_op.create_index('ix_job_status', ['status'], unique=False)

    op.create_table('license_policy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('license_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('max_activations', sa.Integer(), nullable=False),
    sa.Column('validity_days', sa.Integer(), nullable=True),
    sa.Column('allow_offline_activation', sa.Boolean(), nullable=False),
    sa.Column('max_consumptions', sa.BigInteger(), nullable=True),
    sa.Column('allow_overages', sa.Boolean(), nullable=False),
    sa.Column('max_overages', sa.BigInteger(), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['product.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('license_policy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_license_policy_code'), ['code'], unique=True)
        batch_op.create_index(batch_op.f('ix_license_policy_product_id'), ['product_id'], unique=False)

    op.create_table('applied_request',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('applied_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'request_id')
    )
    op.create_table('job_output',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id', 'name')
    )
    with op.batch_alter_table('job_output', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_output_job_id'), ['job_id'], unique=False)

    op.create_table('license',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=True),
    sa.Column('auth_method', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('license_type', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('allow_offline_activation', sa.Boolean(), nullable=False),
    sa.Column('max_activations', sa.Integer(), nullable=False),
    sa.Column('starts_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('max_consumptions', sa.BigInteger(), nullable=True),
    sa.Column('total_consumptions', sa.BigInteger(), nullable=False),
    sa.Column('allow_overages', sa.Boolean(), nullable=False),
    sa.Column('max_overages', sa.BigInteger(), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.ForeignKeyConstraint(['policy_id'], ['license_policy.id'], ),
    sa.ForeignKeyConstraint(['product_id'], ['product.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('license', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_license_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_license_key'), ['key'], unique=True)
        batch_op.create_index(batch_op.f('ix_license_product_id'), ['product_id'], unique=False)

    op.create_table('device',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('hardware_id', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('public_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('activated_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('deactivated_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('hostname', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('os', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('app_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('user_email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('variables', sa.JSON(), nullable=True),
    sa.Column('last_serial', sa.Integer(), nullable=False),
    sa.Column('usage_counter', sa.Integer(), nullable=False),
    sa.Column('usage_chain_head', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('activation_job_id', sa.Integer(), nullable=True),
    sa.Column('deactivation_job_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['license_id'], ['license.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('license_id', 'hardware_id')
    )
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_license_id'), ['license_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_device_public_key'), ['public_key'], unique=False)

    op.create_table('license_feature',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('max_consumptions', sa.BigInteger(), nullable=True),
    sa.Column('total_consumptions', sa.BigInteger(), nullable=False),
    sa.Column('allow_overages', sa.Boolean(), nullable=False),
    sa.Column('max_overages', sa.BigInteger(), nullable=True),
    sa.Column('expires_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['license_id'], ['license.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('license_id', 'code')
    )
    with op.batch_alter_table('license_feature', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_license_feature_license_id'), ['license_id'], unique=False)

    op.create_table('license_user',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('password_hash', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['license.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('license_id', 'email')
    )
    with op.batch_alter_table('license_user', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_license_user_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_license_user_license_id'), ['license_id'], unique=False)

    op.create_table('consumption_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('feature_code', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('overage', sa.BigInteger(), nullable=False),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['device.id'], ),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.ForeignKeyConstraint(['license_id'], ['license.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consumption_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consumption_event_license_id'), ['license_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('consumption_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consumption_event_license_id'))

    op.drop_table('consumption_event')
    with op.batch_alter_table('license_user', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_user_license_id'))
        batch_op.drop_index(batch_op.f('ix_license_user_email'))

    op.drop_table('license_user')
    with op.batch_alter_table('license_feature', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_feature_license_id'))

    op.drop_table('license_feature')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_device_public_key'))
        batch_op.drop_index(batch_op.f('ix_device_license_id'))

    op.drop_table('device')
    with op.batch_alter_table('license', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_product_id'))
        batch_op.drop_index(batch_op.f('ix_license_key'))
        batch_op.drop_index(batch_op.f('ix_license_customer_id'))

    op.drop_table('license')
    with op.batch_alter_table('job_output', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_output_job_id'))

    op.drop_table('job_output')
    op.drop_table('applied_request')
    with op.batch_alter_table('license_policy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_policy_product_id'))
        batch_op.drop_index(batch_op.f('ix_license_policy_code'))

    op.drop_table('license_policy')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_index('ix_job_status')
        batch_op.drop_index(batch_op.f('ix_job_request_id'))
        batch_op.drop_index('ix_job_batch')

    op.drop_table('job')
    with op.batch_alter_table('product', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_product_code'))

    op.drop_table('product')
    with op.batch_alter_table('customer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customer_code'))

    op.drop_table('customer')
    with op.batch_alter_table('batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_batch_tenant'))

    op.drop_table('batch')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_event_license_id'))

    op.drop_table('audit_event')
