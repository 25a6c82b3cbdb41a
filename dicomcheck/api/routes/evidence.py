"""The signed evidence pack of a study's current decision: JSON, PDF report, whole ZIP."""

import json
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, Response

from ...config import Settings
from ...enums import TokenRole
from ...evidence.collect import EvidenceError
from ...evidence.pack import zip_pack
from ...evidence.service import ensure_pack
from ...store.access import TokenInfo
from ...store.reads import IndexSession
from ..deps import AnyToken, OperationsDep, SessionDep, SettingsDep, StudyOperations, StudyUid, audit, readable_study

router = APIRouter(tags=["evidence"])


def pack_minimal(settings: Settings, token: TokenInfo, minimal: bool) -> bool:
    """Auditors (payers, outside the organisation) get the PHI-minimal pack unless the site says otherwise."""
    return minimal or (token.role == TokenRole.AUDITOR and not settings.auditor_full_pack)


def pack_for(
    store: IndexSession,
    operations: StudyOperations,
    request: Request,
    token: TokenInfo,
    study_uid: str,
    minimal: bool,
    kind: str,
) -> Path:
    """The pack folder of the current decision, written on first request; the export is audited."""
    study = readable_study(store, request, token, study_uid)
    if study.current_decision_id is None:
        raise HTTPException(409, f"study {study_uid} is pending: no decision to document yet")
    try:
        folder = ensure_pack(operations, study_uid, minimal=minimal)
    except EvidenceError as exc:
        raise HTTPException(409, str(exc)) from None
    audit(
        store,
        request,
        token,
        "Data Export",
        "R",
        study_uid=study_uid,
        detail={"evidence": kind, "minimal": minimal, "pack": folder.name},
    )
    return folder


@router.get("/studies/{study_uid}/evidence", summary="The evidence pack of the current decision (JSON)")
def evidence_json(
    study_uid: StudyUid,
    request: Request,
    token: AnyToken,
    store: SessionDep,
    operations: OperationsDep,
    settings: SettingsDep,
    minimal: bool = False,
) -> dict:
    minimal = pack_minimal(settings, token, minimal)
    folder = pack_for(store, operations, request, token, study_uid, minimal, "json")
    base = f"/studies/{study_uid}"
    return {
        "pack": folder.name,
        "manifest": json.loads((folder / "manifest.json").read_text()),
        "signature": (folder / "manifest.sig").read_text().strip(),
        "evidence": json.loads((folder / "evidence.json").read_text()),
        "links": {
            "pdf": f"{base}/evidence.pdf" + ("?minimal=true" if minimal else ""),
            "zip": f"{base}/evidence.zip" + ("?minimal=true" if minimal else ""),
        },
    }


@router.get(
    "/studies/{study_uid}/evidence.pdf",
    summary="The readable evidence report (PDF)",
    responses={200: {"content": {"application/pdf": {}}}},
    response_class=Response,
)
def evidence_pdf(
    study_uid: StudyUid,
    request: Request,
    token: AnyToken,
    store: SessionDep,
    operations: OperationsDep,
    settings: SettingsDep,
    minimal: bool = False,
) -> Response:
    folder = pack_for(store, operations, request, token, study_uid, pack_minimal(settings, token, minimal), "pdf")
    return Response(
        (folder / "report.pdf").read_bytes(),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="evidence-{study_uid}.pdf"'},
    )


@router.get(
    "/studies/{study_uid}/evidence.zip",
    summary="The whole signed pack (ZIP)",
    responses={200: {"content": {"application/zip": {}}}},
    response_class=Response,
)
def evidence_zip(
    study_uid: StudyUid,
    request: Request,
    token: AnyToken,
    store: SessionDep,
    operations: OperationsDep,
    settings: SettingsDep,
    minimal: bool = False,
) -> Response:
    folder = pack_for(store, operations, request, token, study_uid, pack_minimal(settings, token, minimal), "zip")
    return Response(
        zip_pack(folder),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="evidence-{study_uid}-{folder.name}.zip"'},
    )
