"""operations (issue 11): evidence returns to the PACS retried with backoff, and page sessions ended by sign-out

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'evidence_return',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('decision_id', sa.Integer(), nullable=False),
        sa.Column('destination', sa.String(length=300), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('attempts_since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('claimed_by', sa.String(length=128), nullable=True),
        sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['decision_id'], ['decision.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_instance_uid', 'decision_id', 'destination', name='uq_evidence_return'),
    )
    with op.batch_alter_table('evidence_return', schema=None) as batch_op:
        batch_op.create_index('ix_evidence_return_state_next', ['state', 'next_attempt_at'], unique=False)
    op.create_table(
        'ended_page_session',
        sa.Column('nonce', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('nonce'),
    )
    with op.batch_alter_table('ended_page_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ended_page_session_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('ended_page_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ended_page_session_expires_at'))
    op.drop_table('ended_page_session')
    with op.batch_alter_table('evidence_return', schema=None) as batch_op:
        batch_op.drop_index('ix_evidence_return_state_next')
    op.drop_table('evidence_return')
