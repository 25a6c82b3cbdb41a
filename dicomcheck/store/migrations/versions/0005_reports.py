"""reports: radiology reports received (HL7 ORU, API, SR) and the documentation verdict each client read

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'report',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
        sa.Column('accession_number', sa.String(length=64), nullable=True),
        sa.Column('patient_id', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=1), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('text_sha256', sa.String(length=64), nullable=False),
        sa.Column('radiologist', sa.String(length=128), nullable=True),
        sa.Column('report_time', sa.DateTime(timezone=True), nullable=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('source', sa.String(length=8), nullable=False),
        sa.Column('sender', sa.String(length=160), nullable=True),
        sa.Column('message_control_id', sa.String(length=199), nullable=True),
        sa.Column('superseded_by', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['superseded_by'], ['report.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index('ix_report_accession_patient', ['accession_number', 'patient_id'], unique=False)
    op.create_table(
        'report_read',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('token_name', sa.String(length=64), nullable=False),
        sa.Column('documentation', sa.String(length=16), nullable=False),
        sa.Column('read_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_instance_uid', 'token_name', name='uq_report_read'),
    )
    with op.batch_alter_table('report_read', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_read_study_instance_uid'), ['study_instance_uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('report_read', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_read_study_instance_uid'))
    op.drop_table('report_read')
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_index('ix_report_accession_patient')
        batch_op.drop_index(batch_op.f('ix_report_study_instance_uid'))
    op.drop_table('report')
