"""The signed evidence pack of a study's current decision: JSON, PDF report, whole ZIP."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from ...config import Settings
from ...enums import TokenRole
from ...evidence.collect import EvidenceError
from ...evidence.pack import zip_pack
from ...evidence.service import ensure_pack
from ...store.access import TokenInfo
from ..deps import AnyToken, OperationsDep, SessionDep, SettingsDep, StudyUid, audit, readable_study

router = APIRouter(tags=["evidence"])


def pack_minimal(settings: Settings, token: TokenInfo, minimal: bool) -> bool:
    """Auditors (payers, outside the organisation) get the PHI-minimal pack unless the site says otherwise."""
    return minimal or (token.role == TokenRole.AUDITOR and not settings.auditor_full_pack)


class PackRequest:
    """A request for the evidence pack of a study's current decision: who asks, for which study, which variant."""

    def __init__(
        self,
        study_uid: StudyUid,
        request: Request,
        token: AnyToken,
        store: SessionDep,
        operations: OperationsDep,
        settings: SettingsDep,
        minimal: bool = False,
    ) -> None:
        self.study_uid = study_uid
        self.request = request
        self.token = token
        self.store = store
        self.operations = operations
        self.minimal = pack_minimal(settings, token, minimal)

    def folder(self, kind: str) -> Path:
        """The pack folder of the current decision, written on first request; the export (``kind``) is audited."""
        study = readable_study(self.store, self.request, self.token, self.study_uid)
        if study.current_decision_id is None:
            raise HTTPException(409, f"study {self.study_uid} is pending: no decision to document yet")
        try:
            folder = ensure_pack(self.operations, self.study_uid, minimal=self.minimal)
        except EvidenceError as exc:
            raise HTTPException(409, str(exc)) from None
        audit(
            self.store,
            self.request,
            self.token,
            "Data Export",
            "R",
            study_uid=self.study_uid,
            detail={"evidence": kind, "minimal": self.minimal, "pack": folder.name},
        )
        return folder

    def attachment(self, kind: str, media_type: str, read: Callable[[Path], bytes], name: str) -> Response:
        """One export of the pack as a download: ``read`` gets its bytes from the pack folder, ``name``
        (formatted with ``study`` and ``pack``) names the file."""
        folder = self.folder(kind)
        filename = name.format(study=self.study_uid, pack=folder.name)
        return Response(
            read(folder),
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


Pack = Annotated[PackRequest, Depends()]


@router.get("/studies/{study_uid}/evidence", summary="The evidence pack of the current decision (JSON)")
def evidence_json(pack: Pack) -> dict:
    folder = pack.folder("json")
    base = f"/studies/{pack.study_uid}"
    return {
        "pack": folder.name,
        "manifest": json.loads((folder / "manifest.json").read_text()),
        "signature": (folder / "manifest.sig").read_text().strip(),
        "evidence": json.loads((folder / "evidence.json").read_text()),
        "links": {
            "pdf": f"{base}/evidence.pdf" + ("?minimal=true" if pack.minimal else ""),
            "zip": f"{base}/evidence.zip" + ("?minimal=true" if pack.minimal else ""),
        },
    }


def evidence_pdf(pack: Pack) -> Response:
    return pack.attachment(
        "pdf", "application/pdf", lambda folder: (folder / "report.pdf").read_bytes(), "evidence-{study}.pdf"
    )


def evidence_zip(pack: Pack) -> Response:
    return pack.attachment("zip", "application/zip", zip_pack, "evidence-{study}-{pack}.zip")


def _download_route(path: str, endpoint: Callable[[PackRequest], Response], media_type: str, summary: str) -> None:
    """A GET route answering with a file of the pack (its media type declared in the API description)."""
    router.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        summary=summary,
        responses={200: {"content": {media_type: {}}}},
        response_class=Response,
    )


_download_route(
    "/studies/{study_uid}/evidence.pdf", evidence_pdf, "application/pdf", "The readable evidence report (PDF)"
)
_download_route("/studies/{study_uid}/evidence.zip", evidence_zip, "application/zip", "The whole signed pack (ZIP)")
