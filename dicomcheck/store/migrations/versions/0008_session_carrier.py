"""session carrier (issue 13): a coder's choice of the study that carries a one_unit session's code, with history

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'session_carrier_choice',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.String(length=32), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('reviewer', sa.String(length=128), nullable=False),
        sa.Column('token_name', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('chosen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('superseded_by', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['study_instance_uid'], ['study.study_instance_uid']),
        sa.ForeignKeyConstraint(['superseded_by'], ['session_carrier_choice.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('session_carrier_choice', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_session_carrier_choice_session_id'), ['session_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('session_carrier_choice', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_session_carrier_choice_session_id'))
    op.drop_table('session_carrier_choice')
