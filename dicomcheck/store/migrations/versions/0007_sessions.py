"""sessions (issue 13): each decided study as its session sees it, and the session record computed for it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'study_session',
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('session_id', sa.String(length=32), nullable=True),
        sa.Column('accession_number', sa.String(length=64), nullable=True),
        sa.Column('outcome', sa.String(length=32), nullable=False),
        sa.Column('has_3d', sa.Boolean(), nullable=False),
        sa.Column('regions', sa.JSON(), nullable=False),
        sa.Column('regions_from', sa.String(length=32), nullable=False),
        sa.Column('made_later', sa.JSON(), nullable=True),
        sa.Column('carrier_chosen', sa.Boolean(), nullable=False),
        sa.Column('first_decided_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('verdict', sa.String(length=32), nullable=False),
        sa.Column('record', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['study_instance_uid'], ['study.study_instance_uid']),
        sa.PrimaryKeyConstraint('study_instance_uid'),
    )
    with op.batch_alter_table('study_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_session_session_id'), ['session_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_session_verdict'), ['verdict'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('study_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_session_verdict'))
        batch_op.drop_index(batch_op.f('ix_study_session_session_id'))
    op.drop_table('study_session')
