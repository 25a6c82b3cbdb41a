"""Index writes and reads for the API: tokens, audit events, registry devices, reviews, reads."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from .records import AuditRecord, DeviceRecord, ReviewRecord, StudyReadRecord, TokenRecord, from_row
from .tables import ApiToken, AuditEvent, Device, DeviceChange, Review, StudyRead, utcnow

ROLES = ("reader", "admin", "auditor", "reporter")
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)
TOKEN_PREFIX = "dck_"


def _text(value: Any) -> Any:
    """A request-derived value as the index can keep it: PostgreSQL text and JSONB refuse NUL, so
    a NUL (e.g. a percent-encoded %00 in a refused request's path) is stored as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_text(v) for v in value]
    return value


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    role: str
    expires_at: dt.datetime | None
    studies: tuple[str, ...]
    accessions: tuple[str, ...]

    def may_read(self, study_uid: str, accession: str | None) -> bool:
        if self.role != "auditor":
            return True
        return study_uid in self.studies or (accession is not None and accession in self.accessions)


class Access:
    """Tokens, audit trail, registry devices, reviews and reads; ``bind`` is an engine (a connection
    per call) or the one connection of an API request (``store.reads.IndexSession``)."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    # ---------------------------------------------------------------- tokens
    def create_token(
        self,
        name: str,
        role: str,
        *,
        expires_at: dt.datetime | None = None,
        studies: list[str] | None = None,
        accessions: list[str] | None = None,
    ) -> str:
        """Create a token and return it; it is shown once, only its hash is kept."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if role == "auditor" and (expires_at is None or not (studies or accessions)):
            raise ValueError("an auditor token needs --expires and at least one --study or --accession")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with Session(self.bind) as session:
            if session.execute(select(col(ApiToken.id)).where(col(ApiToken.name) == name)).first():
                raise ValueError(f"a token named {name!r} exists already")
            session.add(
                ApiToken(
                    name=name,
                    role=role,
                    token_hash=hash_token(token),
                    prefix=token[:10],
                    created_at=utcnow(),
                    expires_at=expires_at,
                    studies=studies or [],
                    accessions=accessions or [],
                )
            )
            session.commit()
        return token

    def list_tokens(self) -> list[TokenRecord]:
        with Session(self.bind) as session:
            return [
                from_row(TokenRecord, t) for t in session.execute(select(ApiToken).order_by(col(ApiToken.id))).scalars()
            ]

    def revoke_token(self, name: str) -> bool:
        with Session(self.bind) as session:
            result = session.execute(
                update(ApiToken)
                .where(col(ApiToken.name) == name, col(ApiToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )
            session.commit()
            return cast(CursorResult[Any], result).rowcount == 1  # an UPDATE's result carries its row count

    def verify(self, token: str) -> TokenInfo | str:
        """The token's identity, or why it is refused."""
        found = self.verify_session(token=token)
        return found if isinstance(found, str) else found[1]

    def verify_session(self, *, token: str | None = None, token_id: int | None = None) -> tuple[int, TokenInfo] | str:
        """The row id and identity of a token given as ``token`` or by its id (a web page's session
        cookie holds the id, never the token), or why it is refused (unknown, revoked, expired)."""
        where = col(ApiToken.token_hash) == hash_token(token) if token is not None else col(ApiToken.id) == token_id
        with Session(self.bind) as session:
            row = session.execute(select(ApiToken).where(where)).scalar_one_or_none()
            if row is None or row.id is None:
                return "unknown token"
            if row.revoked_at is not None:
                return "token revoked"
            expires = row.expires_at
            if expires is not None:
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=dt.UTC)
                if expires <= utcnow():
                    return "token expired"
            now = utcnow()
            last = row.last_used_at
            if last is None or now - last >= LAST_USED_RESOLUTION:  # one write a minute, not one per request
                session.execute(update(ApiToken).where(col(ApiToken.id) == row.id).values(last_used_at=now))
                session.commit()
            return row.id, TokenInfo(row.name, row.role, expires, tuple(row.studies or ()), tuple(row.accessions or ()))

    # ---------------------------------------------------------------- audit
    def audit(
        self,
        *,
        event: str,
        action: str,
        method: str,
        endpoint: str,
        token: TokenInfo | None,
        study_uid: str | None = None,
        client_address: str | None = None,
        outcome: int = 0,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with Session(self.bind) as session:
            session.add(
                AuditEvent(
                    at=utcnow(),
                    event=event,
                    action=action,
                    outcome=outcome,
                    token_name=token.name if token else None,
                    role=token.role if token else None,
                    method=_text(method),
                    endpoint=_text(endpoint),
                    study_instance_uid=_text(study_uid),
                    client_address=_text(client_address),
                    detail=_text(detail or {}),
                )
            )
            session.commit()

    def audit_events(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        event: str | None = None,
        study_uid: str | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        query = select(AuditEvent)
        if since:
            query = query.where(col(AuditEvent.at) >= since)
        if until:
            query = query.where(col(AuditEvent.at) <= until)
        if event:
            query = query.where(col(AuditEvent.event) == event)
        if study_uid:
            query = query.where(col(AuditEvent.study_instance_uid) == study_uid)
        with Session(self.bind) as session:
            return [
                from_row(AuditRecord, e)
                # newest first by time (the ``at`` index, also under a since / until filter), then by id
                for e in session.execute(
                    query.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc()).limit(limit)
                ).scalars()
            ]

    # ---------------------------------------------------------------- registry devices
    def devices(self) -> list[DeviceRecord]:
        with Session(self.bind) as session:
            return [
                from_row(DeviceRecord, d) for d in session.execute(select(Device).order_by(col(Device.id))).scalars()
            ]

    def get_device(self, device_id: int) -> DeviceRecord | None:
        with Session(self.bind) as session:
            device = session.get(Device, device_id)
            return from_row(DeviceRecord, device) if device is not None else None

    def save_device(self, values: dict[str, Any], *, device_id: int | None, token_name: str | None) -> DeviceRecord:
        now = utcnow()
        with Session(self.bind) as session:
            if device_id is None:
                device = Device(**values, created_at=now, updated_at=now)
                before = None
                session.add(device)
            else:
                found = session.get(Device, device_id)
                if found is None:
                    raise KeyError(device_id)
                device, before = found, _device_dict(found)
                for key, value in values.items():
                    setattr(device, key, value)
                device.updated_at = now
            session.flush()
            session.add(
                DeviceChange(
                    device_id=_row_id(device.id),
                    at=now,
                    action="created" if before is None else "updated",
                    token_name=token_name,
                    before=before,
                    after=_device_dict(device),
                )
            )
            session.commit()
            session.refresh(device)
            return from_row(DeviceRecord, device)

    def delete_device(self, device_id: int, *, token_name: str | None) -> bool:
        with Session(self.bind) as session:
            device = session.get(Device, device_id)
            if device is None:
                return False
            session.add(
                DeviceChange(
                    device_id=device_id,
                    at=utcnow(),
                    action="deleted",
                    token_name=token_name,
                    before=_device_dict(device),
                    after=None,
                )
            )
            session.delete(device)
            session.commit()
            return True

    # ---------------------------------------------------------------- reviews and reads
    def add_review(
        self,
        *,
        study_uid: str,
        decision_id: int | None,
        outcome: str,
        code: str | None,
        reviewer: str,
        token_name: str,
        reason: str,
    ) -> ReviewRecord:
        with Session(self.bind) as session:
            review = Review(
                study_instance_uid=study_uid,
                decision_id=decision_id,
                outcome=outcome,
                code=code,
                reviewer=reviewer,
                token_name=token_name,
                reason=reason,
                created_at=utcnow(),
            )
            session.add(review)
            session.commit()
            session.refresh(review)
            return from_row(ReviewRecord, review)

    def reviews(self, study_uid: str) -> list[ReviewRecord]:
        with Session(self.bind) as session:
            return [
                from_row(ReviewRecord, r)
                for r in session.execute(
                    select(Review).where(col(Review.study_instance_uid) == study_uid).order_by(col(Review.id))
                ).scalars()
            ]

    def record_read(
        self, study_uid: str, token_name: str, decision_id: int | None, *, audit: dict[str, Any] | None = None
    ) -> StudyReadRecord | None:
        """Remember the decision this client read (and write its audit event in the same
        transaction); returns the previous read (before this one).

        Simultaneous first reads by one client race to create its row: an insert that does nothing
        on conflict, then a locked read and update, so every one of them succeeds (no unique-key
        violation) and exactly one of them sees no previous read."""
        now = utcnow()
        insert = (postgresql.insert if self.bind.dialect.name == "postgresql" else sqlite.insert)(StudyRead)
        with Session(self.bind) as session:
            if audit is not None:
                session.add(AuditEvent(at=now, **_text(audit)))
            created = session.execute(
                insert.values(study_instance_uid=study_uid, token_name=token_name, decision_id=decision_id, read_at=now)
                .on_conflict_do_nothing(index_elements=["study_instance_uid", "token_name"])
                .returning(col(StudyRead.id))
            ).first()
            snapshot = None
            if created is None:
                previous = session.execute(
                    select(StudyRead)
                    .where(col(StudyRead.study_instance_uid) == study_uid, col(StudyRead.token_name) == token_name)
                    .with_for_update()
                ).scalar_one()
                snapshot = from_row(StudyReadRecord, previous)
                previous.decision_id, previous.read_at = decision_id, now
            session.commit()
            return snapshot

    def reads(self, study_uid: str) -> list[StudyReadRecord]:
        with Session(self.bind) as session:
            return [
                from_row(StudyReadRecord, r)
                for r in session.execute(
                    select(StudyRead).where(col(StudyRead.study_instance_uid) == study_uid)
                ).scalars()
            ]


def _row_id(value: int | None) -> int:
    """The primary key of a row the session has flushed (``None`` only before the flush)."""
    if value is None:
        raise ValueError("row not flushed: it has no id yet")
    return value


def _device_dict(device: Device) -> dict[str, Any]:
    return {
        "station_name": device.station_name,
        "ae_title": device.ae_title,
        "device_serial_number": device.device_serial_number,
        "manufacturer": device.manufacturer,
        "model": device.model,
        "role": device.role,
        "note": device.note,
        "valid_from": device.valid_from.isoformat() if device.valid_from else None,
        "valid_to": device.valid_to.isoformat() if device.valid_to else None,
    }
