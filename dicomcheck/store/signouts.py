"""Page sessions ended by sign-out (issue 11): the signed cookie stays valid to its expiry by itself, so a
sign-out writes the session's nonce here and every request's cookie is checked against it. A row is
worthless once its cookie would have expired; rows past expiry are deleted at the next sign-out."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from .tables import EndedPageSession, utcnow


class SignOuts:
    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind

    def end(self, nonce: str, *, expires_at: dt.datetime) -> None:
        """Refuse the session ``nonce`` from now until ``expires_at``; forget the sessions past their expiry."""
        now = utcnow()
        insert = postgresql.insert if self.bind.dialect.name == "postgresql" else sqlite.insert
        with Session(self.bind) as session:
            session.execute(delete(EndedPageSession).where(col(EndedPageSession.expires_at) < now))
            session.execute(
                insert(EndedPageSession)
                .values(nonce=nonce[:64], expires_at=expires_at, ended_at=now)
                .on_conflict_do_nothing(index_elements=["nonce"])
            )
            session.commit()

    def ended(self, nonce: str) -> bool:
        """Whether the session ``nonce`` was signed out."""
        with Session(self.bind) as session:
            return (
                session.execute(
                    select(col(EndedPageSession.nonce)).where(col(EndedPageSession.nonce) == nonce[:64])
                ).first()
                is not None
            )
