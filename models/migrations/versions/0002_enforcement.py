"""enforcement: public reasons, evaluations, login failures, 64-bit device counters

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import models.types


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public_reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.execute("UPDATE job SET public_reason = reason")
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.alter_column('last_serial', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
        batch_op.alter_column('usage_counter', existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)
    op.create_table('job_evaluation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('public_reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_evaluation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_evaluation_job_id'), ['job_id'], unique=False)
    op.create_table('login_failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
    sa.Column('at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('login_failure', schema=None) as batch_op:
        batch_op.create_index('ix_login_failure_user', ['tenant', 'email', 'at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('login_failure', schema=None) as batch_op:
        batch_op.drop_index('ix_login_failure_user')
    op.drop_table('login_failure')
    with op.batch_alter_table('job_evaluation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_evaluation_job_id'))
    op.drop_table('job_evaluation')
    with op.batch_alter_table('device', schema=None) as batch_op:
        batch_op.alter_column('usage_counter', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
        batch_op.alter_column('last_serial', existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('public_reason')
