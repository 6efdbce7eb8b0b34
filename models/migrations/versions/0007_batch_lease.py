"""bulk imports: the import loading a batch holds a lease on it

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import models.types


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('batch') as batch:
        batch.add_column(sa.Column('loader', sqlmodel.sql.sqltypes.AutoString(length=128),
                                   nullable=True))
        batch.add_column(sa.Column('lease_until', models.types.UTCDateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('batch') as batch:
        batch.drop_column('lease_until')
        batch.drop_column('loader')
