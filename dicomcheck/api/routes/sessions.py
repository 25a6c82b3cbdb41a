"""Sessions (issue 13): a session with its carrier choices, and a coder's choice of the study that carries its
code (``one_unit``: reported once per session, by the first decided study unless a coder chooses another).

Staff tokens only (reader, admin), like reviews: a session names several studies, which an auditor's scope
may not cover. Every choice is kept (who, when, why) and audited; the latest counts, across re-decisions.
"""

import functools
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request

from ...sessions import CarrierChoice
from ...store.sessions import CarrierRefused, SessionNotFound, Sessions, choose_carrier_audited
from ..deps import SessionDep, StaffToken, audit
from ..schemas import SESSION_ID_PATTERN, CarrierChoiceOut, CarrierIn, ErrorOut, SessionCarrierOut, SessionOut

router = APIRouter(tags=["sessions"])
SessionId = Annotated[
    str, Path(min_length=28, max_length=28, pattern=SESSION_ID_PATTERN, description="A session's id (`ses-` + 24 hex)")
]


def choice_out(session_id: str, choice: CarrierChoice, current: bool) -> CarrierChoiceOut:
    return CarrierChoiceOut(
        id=choice.choice_id,
        session_id=session_id,
        study_instance_uid=choice.study_instance_uid,
        reviewer=choice.reviewer,
        reason=choice.reason,
        chosen_at=choice.chosen_at,
        current=current,
    )


@router.get(
    "/sessions/{session_id}",
    response_model=SessionOut,
    summary="A session: its verdict, its studies and the coders' carrier choices",
    responses={404: {"model": ErrorOut, "description": "No decided study is in this session"}},
)
def get_session(session_id: SessionId, request: Request, token: StaffToken, store: SessionDep) -> SessionOut:
    sessions = Sessions(store.reader.bind)
    record = sessions.of_session(session_id)
    if record is None:
        raise HTTPException(404, f"no decided study is in session {session_id}")
    choices = sessions.carrier_choices(session_id)
    audit(store, request, token, "Query", "E", detail={"session_id": session_id, "studies": len(record.studies)})
    return SessionOut(
        session=record, carrier_choices=[choice_out(session_id, c, i == 0) for i, c in enumerate(choices)]
    )


@router.post(
    "/sessions/{session_id}/carrier",
    response_model=SessionCarrierOut,
    status_code=201,
    summary="Record a coder's choice of the study that carries the session's code",
    responses={
        404: {"model": ErrorOut, "description": "No decided study is in this session"},
        409: {"model": ErrorOut, "description": "The study is not in the session, or its outcome supports no code"},
    },
)
def choose_carrier(
    session_id: SessionId, body: CarrierIn, request: Request, token: StaffToken, store: SessionDep
) -> SessionCarrierOut:
    """The study named carries the session's code from now on (``carrier_from``: ``coder_choice``); the
    session's earlier choice is superseded (kept), and the session record of every study of it is recomputed
    at once. Refused: a study outside the session, or one whose outcome supports no code."""
    try:
        choice, record = choose_carrier_audited(
            store,
            session_id,
            body.study_instance_uid,
            reviewer=body.reviewer,
            token_name=token.name,
            reason=body.reason,
            audit=functools.partial(
                audit, store, request, token, "Procedure Record", "U", study_uid=body.study_instance_uid
            ),
        )
    except (SessionNotFound, CarrierRefused) as exc:
        raise HTTPException(404 if isinstance(exc, SessionNotFound) else 409, str(exc)) from None
    return SessionCarrierOut(choice=choice_out(session_id, choice, True), session=record)
