"""mail intake: senders mapped to customers, the ledger of messages seen

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import models.types


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_message',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('mailbox', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
    sa.Column('uid', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sqlmodel.sql.sqltypes.AutoString(length=998), nullable=True),
    sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('tenant', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('tickets', sa.JSON(), nullable=True),
    sa.Column('replied_at', models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('mailbox', 'uidvalidity', 'uid')
    )
    op.create_index('ix_mail_message_id', 'mail_message', ['mailbox', 'message_id'], unique=False)
    op.create_table('mail_sender',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('address', sqlmodel.sql.sqltypes.AutoString(length=254), nullable=True),
    sa.Column('domain', sqlmodel.sql.sqltypes.AutoString(length=253), nullable=True),
    sa.Column('created_at', models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('address'),
    sa.UniqueConstraint('domain')
    )
    op.create_index(op.f('ix_mail_sender_customer_id'), 'mail_sender', ['customer_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mail_sender_customer_id'), table_name='mail_sender')
    op.drop_table('mail_sender')
    op.drop_index('ix_mail_message_id', table_name='mail_message')
    op.drop_table('mail_message')
