"""lookup indexes (issue 14): studies newest first, a study from its current decision, series by modality

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:45:00
"""

from __future__ import annotations

from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.create_index('ix_study_first_arrival_uid', ['first_arrival', 'study_instance_uid'], unique=False)
        batch_op.create_index('ix_study_current_decision', ['current_decision_id'], unique=False)
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index('ix_series_modality_study', ['modality', 'study_instance_uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index('ix_series_modality_study')
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index('ix_study_current_decision')
        batch_op.drop_index('ix_study_first_arrival_uid')
