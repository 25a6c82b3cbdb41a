"""association owner: the receiving process, so a start closes the rows a killed process left open

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_association_ended_at'), ['ended_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_association_ended_at'))
        batch_op.drop_column('owner')
