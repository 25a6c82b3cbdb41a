"""pixel retention: instance pixel state and header-only copy, study retention time, quarantine expiry

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-10 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pixel_state', sa.String(length=16), nullable=False, server_default='full'))
        batch_op.add_column(sa.Column('header_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('header_size', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('pruned_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retention_applied_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_study_decided_at'), ['decided_at'], unique=False)
    with op.batch_alter_table('quarantined', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('quarantined', schema=None) as batch_op:
        batch_op.drop_column('expired_at')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_decided_at'))
        batch_op.drop_column('retention_applied_at')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('pruned_at')
        batch_op.drop_column('header_size')
        batch_op.drop_column('pixel_state')
        batch_op.drop_column('header_sha256')
