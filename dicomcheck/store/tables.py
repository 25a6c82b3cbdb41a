"""The index: studies, series, instances (with the header facts), receipts, associations,
decisions and quarantined inputs. Only ``dicomcheck.store`` imports sqlmodel.

Times are timezone-aware UTC. The settle timer lives here (``Study.last_arrival``,
``Study.needs_decision``), so any receiver sharing the index can decide a study another received.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(nullable: bool = False, index: bool = False) -> Column:
    return Column(DateTime(timezone=True), nullable=nullable, index=index)


class Study(SQLModel, table=True):
    __tablename__ = "study"

    study_instance_uid: str = Field(primary_key=True, max_length=64)
    accession_number: str | None = Field(default=None, max_length=64, index=True)
    patient_id: str | None = Field(default=None, max_length=64, index=True)
    study_date: str | None = Field(default=None, max_length=16)
    study_description: str | None = Field(default=None, sa_column=Column(Text))
    modalities: str | None = Field(default=None, max_length=128)
    instance_count: int = 0
    first_arrival: dt.datetime = Field(sa_column=_ts())
    last_arrival: dt.datetime = Field(sa_column=_ts(index=True))
    needs_decision: bool = Field(default=True, index=True)
    """Set on every arrival; cleared when a decision has seen every instance."""
    claimed_by: str | None = Field(default=None, max_length=128)
    claimed_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    current_decision_id: int | None = Field(default=None, foreign_key="decision.id")
    decided_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class Series(SQLModel, table=True):
    __tablename__ = "series"

    series_instance_uid: str = Field(primary_key=True, max_length=64)
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64, index=True)
    modality: str | None = Field(default=None, max_length=16)
    series_number: str | None = Field(default=None, max_length=16)
    series_description: str | None = Field(default=None, sa_column=Column(Text))
    sop_class_uid: str | None = Field(default=None, max_length=64)
    instance_count: int = 0


class Association(SQLModel, table=True):
    __tablename__ = "association"

    id: int | None = Field(default=None, primary_key=True)
    node: str = Field(max_length=128)
    calling_ae: str = Field(max_length=16, index=True)
    called_ae: str = Field(max_length=16)
    peer_address: str = Field(max_length=64)
    peer_port: int | None = None
    implementation_class_uid: str | None = Field(default=None, max_length=64)
    implementation_version_name: str | None = Field(default=None, max_length=16)
    tls: bool = False
    status: str = Field(default="accepted", max_length=16)
    """accepted | released | aborted | rejected"""
    reject_reason: str | None = Field(default=None, sa_column=Column(Text))
    started_at: dt.datetime = Field(sa_column=_ts(index=True))
    ended_at: dt.datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    instances_received: int = 0
    duplicates: int = 0
    failures: int = 0


class Instance(SQLModel, table=True):
    """One stored version of an instance; a re-sent UID with other content adds a version."""

    __tablename__ = "instance"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_content"),
        Index("ix_instance_study_sop", "study_instance_uid", "sop_instance_uid"),
    )

    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, index=True)
    version: int = 1
    study_instance_uid: str = Field(foreign_key="study.study_instance_uid", max_length=64)
    series_instance_uid: str = Field(foreign_key="series.series_instance_uid", max_length=64, index=True)
    sop_class_uid: str | None = Field(default=None, max_length=64)
    transfer_syntax_uid: str | None = Field(default=None, max_length=64)
    sha256: str = Field(max_length=64)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    path: str = Field(sa_column=Column(Text, nullable=False))
    """Relative to the storage folder."""
    received_at: dt.datetime = Field(sa_column=_ts())
    association_id: int | None = Field(default=None, foreign_key="association.id", index=True)
    facts: dict = Field(sa_column=Column(JSON, nullable=False))


class Receipt(SQLModel, table=True):
    """Every arrival of an instance, duplicates included: who sent it, when, from where, how."""

    __tablename__ = "receipt"

    id: int | None = Field(default=None, primary_key=True)
    instance_id: int = Field(foreign_key="instance.id", index=True)
    association_id: int | None = Field(default=None, foreign_key="association.id", index=True)
    received_at: dt.datetime = Field(sa_column=_ts())
    transfer_syntax_uid: str | None = Field(default=None, max_length=64)
    calling_ae: str | None = Field(default=None, max_length=16)
    called_ae: str | None = Field(default=None, max_length=16)
    peer_address: str | None = Field(default=None, max_length=64)
    implementation_class_uid: str | None = Field(default=None, max_length=64)
    implementation_version_name: str | None = Field(default=None, max_length=16)
    move_originator_ae: str | None = Field(default=None, max_length=16)
    duplicate: bool = False


class Decision(SQLModel, table=True):
    """One decision of a study; the study's history is every row, newest current."""

    __tablename__ = "decision"

    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, index=True)
    decided_at: dt.datetime = Field(sa_column=_ts(index=True))
    node: str = Field(max_length=128)
    rules_version: str = Field(max_length=32)
    dicomcheck_version: str = Field(max_length=32)
    outcome: str = Field(max_length=32, index=True)
    code: str | None = Field(default=None, max_length=8)
    instance_count: int
    registry_path: str | None = Field(default=None, sa_column=Column(Text))
    document: dict = Field(sa_column=Column(JSON, nullable=False))
    """The study as ``analyze --format json`` prints it."""


class Quarantined(SQLModel, table=True):
    __tablename__ = "quarantined"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    status: int
    received_at: dt.datetime = Field(sa_column=_ts(index=True))
    association_id: int | None = Field(default=None, foreign_key="association.id")
    sop_class_uid: str | None = Field(default=None, max_length=64)
    sop_instance_uid: str | None = Field(default=None, max_length=64)
    sha256: str | None = Field(default=None, max_length=64)
