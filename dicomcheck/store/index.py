"""Queries and writes of the index, in one place. Safe for several processes sharing PostgreSQL:
upserts and insert-or-ignore keep one row per study / series / content version under races."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Engine, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from ..decision_record import StudyDecisionUnderPolicy
from ..model import InstanceFacts, facts_from_dict, facts_to_dict
from ..own_objects import is_own_object
from .files import printable
from .reads import IndexReader
from .records import StudyRecord
from .tables import Association, Decision, Instance, Quarantined, Receipt, Review, Series, Study, utcnow


@dataclass(frozen=True, slots=True)
class ReceiptInfo:
    """Who sent an instance, when, from where and how (evidence later)."""

    association_id: int | None
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    implementation_class_uid: str | None
    implementation_version_name: str | None
    transfer_syntax_uid: str | None
    move_originator_ae: str | None = None


@dataclass(frozen=True, slots=True)
class Added:
    instance_id: int
    version: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class NewInstance:
    """A stored file to index (:meth:`Index.add_instances`): its facts, content and receipt."""

    facts: InstanceFacts
    sha256: str
    size: int
    path: str
    receipt: ReceiptInfo
    received_at: dt.datetime


_IN_CHUNK = 500
"""UIDs per ``IN (...)`` list (SQLite's bound-parameter limit is far above)."""


def _cut(value: str | None, length: int = 64) -> str | None:
    return value[:length] if value else None


def _printable_cut(value: str | None, length: int = 64) -> str | None:
    return printable(value, length) if value else None


class Index:
    def __init__(self, engine: Engine, node: str, owner: str | None = None) -> None:
        self.engine = engine
        self.node = node
        self.owner = owner
        """This process (``store.files.process_identity``), kept on the associations it opens."""
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # ---------------------------------------------------------------- associations
    def open_association(
        self,
        *,
        calling_ae: str,
        called_ae: str,
        peer_address: str,
        peer_port: int | None,
        implementation_class_uid: str | None,
        implementation_version_name: str | None,
        tls: bool,
        status: str = "accepted",
        reject_reason: str | None = None,
    ) -> int:
        with Session(self.engine) as session:
            row = Association(
                node=self.node,
                calling_ae=calling_ae[:16],
                called_ae=called_ae[:16],
                peer_address=peer_address[:64],
                peer_port=peer_port,
                implementation_class_uid=implementation_class_uid,
                implementation_version_name=(implementation_version_name or None) and implementation_version_name[:16],
                tls=tls,
                status=status,
                reject_reason=reject_reason,
                started_at=utcnow(),
                ended_at=utcnow() if status == "rejected" else None,
                owner=self.owner,
            )
            session.add(row)
            session.commit()
            assert row.id is not None  # the database assigned it on commit
            return row.id

    def close_association(
        self, association_id: int, *, status: str, received: int, duplicates: int, failures: int
    ) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(Association)
                .where(col(Association.id) == association_id)
                .values(
                    status=status,
                    ended_at=utcnow(),
                    instances_received=received,
                    duplicates=duplicates,
                    failures=failures,
                )
            )
            session.commit()

    def close_abandoned_associations(self, owner_dead: Callable[[str], bool]) -> list[tuple[int, int]]:
        """Close, as ``aborted``, the associations left open by processes that are provably gone.

        ``owner_dead(owner)`` is true only for a process known dead (``store.files.process_alive``
        is False): receivers sharing one PostgreSQL index keep their open rows. The counts are what
        the index holds of the association: instances received (each one indexed, with its receipt,
        before success was answered), duplicates among them, and quarantined failures. Returns
        ``(association id, instances received)`` of each row closed.
        """
        closed: list[tuple[int, int]] = []
        with Session(self.engine) as session:
            candidates = session.execute(
                select(col(Association.id), col(Association.owner)).where(
                    col(Association.ended_at).is_(None),
                    col(Association.status) == "accepted",
                    col(Association.owner).is_not(None),
                )
            ).all()
            for association_id, owner in candidates:
                if not owner_dead(owner):
                    continue
                received, duplicates = session.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(case((col(Receipt.duplicate).is_(True), 1), else_=0)), 0),
                    )
                    .select_from(Receipt)
                    .where(col(Receipt.association_id) == association_id)
                ).one()
                failures = session.execute(
                    select(func.count())
                    .select_from(Quarantined)
                    .where(col(Quarantined.association_id) == association_id)
                ).scalar_one()
                result = session.execute(
                    update(Association)
                    .where(col(Association.id) == association_id, col(Association.ended_at).is_(None))
                    .values(
                        status="aborted",
                        ended_at=utcnow(),
                        instances_received=received,
                        duplicates=duplicates,
                        failures=failures,
                    )
                )
                session.commit()
                if cast(CursorResult[Any], result).rowcount == 1:  # an UPDATE's result carries its row count
                    closed.append((int(association_id), int(received)))
        return closed

    def association_receipt(self, association_id: int | None, transfer_syntax_uid: str | None) -> ReceiptInfo:
        """The receipt of an instance of ``association_id`` (its peer, as recorded at the start)."""
        row = None
        if association_id is not None:
            with Session(self.engine) as session:
                row = session.get(Association, association_id)
        return ReceiptInfo(
            association_id=row.id if row is not None else None,
            calling_ae=row.calling_ae if row is not None else None,
            called_ae=row.called_ae if row is not None else None,
            peer_address=row.peer_address if row is not None else None,
            implementation_class_uid=row.implementation_class_uid if row is not None else None,
            implementation_version_name=row.implementation_version_name if row is not None else None,
            transfer_syntax_uid=transfer_syntax_uid,
        )

    # ---------------------------------------------------------------- instances
    def find_content(self, sop_instance_uid: str, sha256: str) -> int | None:
        with Session(self.engine) as session:
            return session.execute(
                select(col(Instance.id)).where(
                    col(Instance.sop_instance_uid) == sop_instance_uid, col(Instance.sha256) == sha256
                )
            ).scalar_one_or_none()

    def add_instances(self, batch: Sequence[NewInstance], *, replay: bool = False) -> list[Added]:
        """Index stored files in one transaction: studies and series upserted, each content version
        inserted once (a content already indexed, or indexed by another receiver a moment ago, gets a
        duplicate receipt), counts raised, one receipt per file. A handful of statements whatever the
        batch size (``executemany`` of prepared Core statements, no ORM unit of work).

        ``replay`` (a journal replayed after a crash): a receipt already there (same instance,
        association and time of receipt) is not added again, so a replay is idempotent.
        """
        if not batch:
            return []
        now = utcnow()
        for row in batch:
            assert row.facts.study_instance_uid and row.facts.series_instance_uid and row.facts.sop_instance_uid
        with self.engine.begin() as connection:
            self._upsert_studies_and_series(connection, batch, now)
            known, new = self._versions(connection, batch)
            inserted: dict[tuple[str, str], int] = {}
            if new:
                returned = connection.execute(
                    self._insert(Instance)
                    .on_conflict_do_nothing(index_elements=["sop_instance_uid", "sha256"])
                    .returning(col(Instance.id), col(Instance.sop_instance_uid), col(Instance.sha256)),
                    list(new.values()),
                )
                inserted = {(sop, sha256): cast(int, instance_id) for instance_id, sop, sha256 in returned}
            raced = sorted({sop for sop, sha256 in new if (sop, sha256) not in inserted})
            if raced:  # another receiver indexed the same content a moment ago
                known.update(self._contents(connection, raced))
            self._raise_counts(connection, batch, {key: new[key] for key in inserted})

            # one receipt per file received; the first receipt of a content inserted here is not a duplicate
            added: list[Added] = []
            receipts: list[dict[str, Any]] = []
            first_seen: set[tuple[str, str]] = set()
            for row in batch:
                key = (cast(str, row.facts.sop_instance_uid), row.sha256)
                if key in inserted:
                    instance_id, duplicate, version = inserted[key], key in first_seen, new[key]["version"]
                else:
                    instance_id, duplicate, version = known[key], True, 0
                first_seen.add(key)
                added.append(Added(int(instance_id), version, duplicate))
                if not (replay and self._has_receipt(connection, instance_id, row)):
                    receipts.append(self._receipt(instance_id, row, duplicate=duplicate))
            if receipts:
                connection.execute(self._insert(Receipt), receipts)
            return added

    def _upsert_studies_and_series(
        self, connection: Connection, batch: Sequence[NewInstance], now: dt.datetime
    ) -> None:
        """Insert the batch's new studies and series; a study that gets an instance (not our own
        object) waits for its decision again from ``now``. In UID order: concurrent writers lock
        rows in one order."""
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        for row in batch:
            facts = row.facts
            values = studies.setdefault(
                cast(str, facts.study_instance_uid),
                {
                    "study_instance_uid": facts.study_instance_uid,
                    "accession_number": facts.accession_number,
                    "patient_id": facts.patient_id,
                    "study_date": facts.study_date,
                    "study_description": facts.study_description,
                    "modalities": facts.modality,
                    "instance_count": 0,
                    "first_arrival": now,
                    "last_arrival": now,
                    "needs_decision": False,
                },
            )
            values["needs_decision"] = values["needs_decision"] or not is_own_object(facts)
            series.setdefault(
                cast(str, facts.series_instance_uid),
                {
                    "series_instance_uid": facts.series_instance_uid,
                    "study_instance_uid": facts.study_instance_uid,
                    "modality": facts.modality,
                    "series_number": facts.series_number,
                    "series_description": facts.series_description,
                    "sop_class_uid": facts.sop_class_uid,
                    "instance_count": 0,
                    "station_name": _cut(facts.equipment.station_name),
                    "device_serial_number": _cut(facts.equipment.device_serial_number),
                    "manufacturer": _cut(facts.equipment.manufacturer),
                    "model": _cut(facts.equipment.model),
                    "calling_ae": _cut(row.receipt.calling_ae, 16),
                },
            )
        ordered = [studies[uid] for uid in sorted(studies)]
        deciding = [values for values in ordered if values["needs_decision"]]
        if deciding:
            connection.execute(
                self._insert(Study).on_conflict_do_update(
                    index_elements=["study_instance_uid"], set_={"last_arrival": now, "needs_decision": True}
                ),
                deciding,
            )
        if len(deciding) < len(ordered):  # our own objects' studies: created, never waiting for a decision
            connection.execute(
                self._insert(Study).on_conflict_do_nothing(index_elements=["study_instance_uid"]),
                [values for values in ordered if not values["needs_decision"]],
            )
        connection.execute(
            self._insert(Series).on_conflict_do_nothing(index_elements=["series_instance_uid"]),
            [series[uid] for uid in sorted(series)],
        )

    def _versions(
        self, connection: Connection, batch: Sequence[NewInstance]
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], dict[str, Any]]]:
        """The batch's contents already indexed (``(sop, sha256)`` -> id) and the rows of the new
        ones, each the next version of its SOP Instance UID."""
        known = self._contents(connection, sorted({cast(str, row.facts.sop_instance_uid) for row in batch}))
        versions: dict[str, int] = {}
        for sop, _ in known:
            versions[sop] = versions.get(sop, 0) + 1
        new: dict[tuple[str, str], dict[str, Any]] = {}
        for row in batch:
            key = (cast(str, row.facts.sop_instance_uid), row.sha256)
            if key in known or key in new:
                continue
            versions[key[0]] = versions.get(key[0], 0) + 1
            new[key] = {
                "sop_instance_uid": key[0],
                "version": versions[key[0]],
                "study_instance_uid": row.facts.study_instance_uid,
                "series_instance_uid": row.facts.series_instance_uid,
                "sop_class_uid": row.facts.sop_class_uid,
                "transfer_syntax_uid": row.receipt.transfer_syntax_uid,
                "sha256": row.sha256,
                "size": row.size,
                "path": row.path,
                "received_at": row.received_at,
                "association_id": row.receipt.association_id,
                "facts": facts_to_dict(row.facts),
            }
        return known, new

    @staticmethod
    def _contents(connection: Connection, sops: list[str]) -> dict[tuple[str, str], int]:
        """``(sop, sha256)`` -> instance id of every indexed version of ``sops``."""
        found: dict[tuple[str, str], int] = {}
        for start in range(0, len(sops), _IN_CHUNK):
            chunk = sops[start : start + _IN_CHUNK]
            for instance_id, sop, sha256 in connection.execute(
                select(col(Instance.id), col(Instance.sop_instance_uid), col(Instance.sha256)).where(
                    col(Instance.sop_instance_uid).in_(chunk)
                )
            ):
                found[sop, sha256] = cast(int, instance_id)
        return found

    @staticmethod
    def _raise_counts(
        connection: Connection, batch: Sequence[NewInstance], inserted: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        """A first version inserted is a new instance of its series, and of its study unless it is our own object."""
        own = {(row.facts.sop_instance_uid, row.sha256): is_own_object(row.facts) for row in batch}
        studies: dict[str, int] = {}
        series: dict[str, int] = {}
        for key, values in inserted.items():
            if values["version"] != 1:
                continue
            if not own[key]:
                studies[values["study_instance_uid"]] = studies.get(values["study_instance_uid"], 0) + 1
            series[values["series_instance_uid"]] = series.get(values["series_instance_uid"], 0) + 1
        for table, key_column, counts in (
            (Study, col(Study.study_instance_uid), studies),
            (Series, col(Series.series_instance_uid), series),
        ):
            if counts:
                connection.execute(
                    update(table)
                    .where(key_column == bindparam("uid"))
                    .values(instance_count=table.instance_count + bindparam("n")),
                    [{"uid": uid, "n": n} for uid, n in sorted(counts.items())],
                )

    @staticmethod
    def _has_receipt(connection: Connection, instance_id: int, row: NewInstance) -> bool:
        association = col(Receipt.association_id)
        return (
            connection.execute(
                select(col(Receipt.id)).where(
                    col(Receipt.instance_id) == instance_id,
                    association.is_(None)
                    if row.receipt.association_id is None
                    else association == row.receipt.association_id,
                    col(Receipt.received_at) == row.received_at,
                )
            ).first()
            is not None
        )

    @staticmethod
    def _receipt(instance_id: int, row: NewInstance, *, duplicate: bool) -> dict[str, Any]:
        receipt = row.receipt
        return {
            "instance_id": instance_id,
            "association_id": receipt.association_id,
            "received_at": row.received_at,
            "transfer_syntax_uid": receipt.transfer_syntax_uid,
            "calling_ae": receipt.calling_ae,
            "called_ae": receipt.called_ae,
            "peer_address": receipt.peer_address,
            "implementation_class_uid": receipt.implementation_class_uid,
            "implementation_version_name": (receipt.implementation_version_name or None)
            and receipt.implementation_version_name[:16],
            "move_originator_ae": receipt.move_originator_ae,
            "duplicate": duplicate,
        }

    def add_quarantined(
        self,
        *,
        path: str,
        reason: str,
        status: int,
        association_id: int | None,
        sop_class_uid: str | None,
        sop_instance_uid: str | None,
        sha256: str | None,
    ) -> None:
        with Session(self.engine) as session:
            # received values as they came may be anything (NUL, 200 characters): the sidecar JSON
            # keeps them whole; the columns get a printable, cut rendering, on every database
            session.add(
                Quarantined(
                    path=path,
                    reason=printable(reason, 4096),
                    status=status,
                    received_at=utcnow(),
                    association_id=association_id,
                    sop_class_uid=_printable_cut(sop_class_uid),
                    sop_instance_uid=_printable_cut(sop_instance_uid),
                    sha256=sha256,
                )
            )
            session.commit()

    # ---------------------------------------------------------------- settling and decisions
    def due_studies(self, *, stable_after: float, lease: float, limit: int = 50) -> list[str]:
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=stable_after)
        stale_claim = now - dt.timedelta(seconds=lease)
        with Session(self.engine) as session:
            return list(
                session.execute(
                    select(col(Study.study_instance_uid))
                    .where(
                        col(Study.needs_decision).is_(True),
                        col(Study.last_arrival) <= cutoff,
                        or_(col(Study.claimed_at).is_(None), col(Study.claimed_at) < stale_claim),
                    )
                    .order_by(col(Study.last_arrival))
                    .limit(limit)
                ).scalars()
            )

    def claim(self, study_uid: str, *, lease: float) -> dt.datetime | None:
        """Take the study for deciding (one node at a time); the last arrival seen, or None."""
        now = utcnow()
        stale_claim = now - dt.timedelta(seconds=lease)
        with Session(self.engine) as session:
            result = session.execute(
                update(Study)
                .where(
                    col(Study.study_instance_uid) == study_uid,
                    col(Study.needs_decision).is_(True),
                    or_(col(Study.claimed_at).is_(None), col(Study.claimed_at) < stale_claim),
                )
                .values(claimed_by=self.node, claimed_at=now)
            )
            last = session.execute(
                select(col(Study.last_arrival)).where(col(Study.study_instance_uid) == study_uid)
            ).scalar_one_or_none()
            session.commit()
            # an UPDATE's result carries its row count
            return last if cast(CursorResult[Any], result).rowcount == 1 else None

    def last_arrival(self, study_uid: str) -> dt.datetime | None:
        """When the study last got an instance indexed (None: no such study)."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(col(Study.last_arrival)).where(col(Study.study_instance_uid) == study_uid)
            ).scalar_one_or_none()

    def release(self, study_uid: str) -> None:
        with Session(self.engine) as session:
            session.execute(
                update(Study)
                .where(col(Study.study_instance_uid) == study_uid, col(Study.claimed_by) == self.node)
                .values(claimed_by=None, claimed_at=None)
            )
            session.commit()

    def study_facts(self, study_uid: str) -> list[InstanceFacts]:
        """The facts of the newest version of every instance of the study (no file is read)."""
        with Session(self.engine) as session:
            newest = (
                select(col(Instance.sop_instance_uid), func.max(col(Instance.version)).label("version"))
                .where(col(Instance.study_instance_uid) == study_uid)
                .group_by(col(Instance.sop_instance_uid))
                .subquery()
            )
            rows = session.execute(
                select(col(Instance.facts))
                .join(
                    newest,
                    and_(
                        col(Instance.sop_instance_uid) == newest.c.sop_instance_uid,
                        col(Instance.version) == newest.c.version,
                    ),
                )
                .where(col(Instance.study_instance_uid) == study_uid)
                .order_by(col(Instance.id))
            ).scalars()
            return [facts for facts in map(facts_from_dict, rows) if not is_own_object(facts)]

    def save_decision(
        self,
        study_uid: str,
        record: StudyDecisionUnderPolicy,
        *,
        last_arrival_seen: dt.datetime,
        rules_version: str,
        dicomcheck_version: str,
        registry_path: str | None,
    ) -> int:
        """Keep the decision (its JSON dump) in the history; clear the settle flag unless more arrived meanwhile."""
        now = utcnow()
        with Session(self.engine) as session:
            decision = Decision(
                study_instance_uid=study_uid,
                decided_at=now,
                node=self.node,
                rules_version=rules_version,
                dicomcheck_version=dicomcheck_version,
                outcome=record.outcome.value,
                code=record.code,
                instance_count=record.instances,
                registry_path=registry_path,
                document=record.document(),
            )
            previous = session.execute(
                select(col(Decision.outcome))
                .join(Study, col(Study.current_decision_id) == col(Decision.id))
                .where(col(Study.study_instance_uid) == study_uid)
            ).scalar_one_or_none()
            session.add(decision)
            session.flush()
            if previous is not None and previous != decision.outcome:  # a coder's review no longer matches
                session.execute(
                    update(Review)
                    .where(col(Review.study_instance_uid) == study_uid, col(Review.stale_since).is_(None))
                    .values(stale_since=now)
                )
            session.execute(
                update(Study)
                .where(col(Study.study_instance_uid) == study_uid)
                .values(
                    current_decision_id=decision.id,
                    decided_at=now,
                    claimed_by=None,
                    claimed_at=None,
                )
            )
            session.execute(
                update(Study)
                .where(col(Study.study_instance_uid) == study_uid, col(Study.last_arrival) == last_arrival_seen)
                .values(needs_decision=False)
            )
            session.commit()
            assert decision.id is not None  # the database assigned it on flush
            return decision.id

    # ---------------------------------------------------------------- reads
    def get_study(self, study_uid: str) -> StudyRecord | None:
        """The study as a typed record; every other lookup is on ``store.reads.IndexReader``."""
        return IndexReader(self.engine).study(study_uid)
