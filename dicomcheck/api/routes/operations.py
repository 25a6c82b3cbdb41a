"""Liveness, index reachability, what waits (operations signals) and Prometheus metrics."""

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ... import __version__, metrics
from ...store.reads import index_reachable
from ...store.retention import budget_for, human_bytes
from ...store.signals import IndexBind, OperationsSignals, operations_signals
from ..deps import OperationsDep, SessionDep, StaffToken
from ..schemas import Health

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


def _signals(bind: IndexBind) -> OperationsSignals | None:
    """The operations signals read from the index now, the gauges set from them; None when it cannot answer."""
    try:
        signals = operations_signals(bind)
    except Exception as exc:  # noqa: BLE001 - an unreachable index is reported by /healthz itself
        log.warning("operations signals not read: %s", type(exc).__name__)
        return None
    metrics.REVIEW_BACKLOG.set(signals.review_backlog)
    metrics.REVIEW_BACKLOG_OLDEST.set(signals.review_backlog_oldest_seconds)
    metrics.PENDING_STUDIES.set(signals.pending_studies)
    metrics.QUARANTINED.set(signals.quarantined)
    metrics.EVIDENCE_RETURNS.labels("pending").set(signals.evidence_returns_waiting)
    metrics.EVIDENCE_RETURNS.labels("failed").set(signals.evidence_returns_failed)
    return signals


def _degrade(body: dict[str, Any], reason: str) -> None:
    """Mark the health answer degraded (still 200), its reason added to those already there."""
    body["status"] = "degraded"
    body["reason"] = "; ".join(filter(None, [body.get("reason"), reason]))


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness and index reachability",
    responses={503: {"model": Health, "description": "The index is unreachable"}},
)
def healthz(operations: OperationsDep) -> JSONResponse:
    # A bad --devices file degrades (decisions go on with its last good version) but stays 200:
    # this node still serves lookups; 503 only when the index is unreachable.
    registry = operations.reload_registry()
    body: dict[str, Any] = {
        "status": "ok",
        "index": "reachable",
        "version": __version__,
        "registry": "none" if operations.settings.devices is None else "error" if registry.error else "ok",
    }
    if registry.error:
        _degrade(body, f"device registry unusable, deciding with its last good version: {registry.error}"[:500])
    # Below min_free_space new instances are refused with 0xA700 (store/retention.py): degraded, still 200.
    settings = operations.settings
    space = budget_for(settings.storage_dir, settings.min_free_space_budget).space()
    body["storage"] = "unknown" if space is None else "below min_free_space" if space.below else "ok"
    if space is not None and space.below:
        _degrade(
            body,
            f"storage volume below min_free_space ({human_bytes(space.free)} free, "
            f"{human_bytes(space.wanted)} wanted): new instances are refused with 0xA700",
        )
    # What waits is not liveness: 200 whatever the counts. Failed evidence returns are the exception that
    # degrades: the PACS lacks a decision's KOS / SR and nothing more will be tried until someone acts
    # (`dicomcheck evidence returns --retry`), like the other degraded states (a registry file or a volume to fix).
    signals = _signals(operations.engine)  # read: the index is reachable, no second check needed
    if signals is not None:
        body["operations"] = {
            "review_backlog": signals.review_backlog,
            "review_backlog_oldest_seconds": round(signals.review_backlog_oldest_seconds, 1),
            "pending_studies": signals.pending_studies,
            "quarantined": signals.quarantined,
            "evidence_returns_waiting": signals.evidence_returns_waiting,
            "evidence_returns_failed": signals.evidence_returns_failed,
        }
        if signals.evidence_returns_failed:
            _degrade(
                body,
                f"{signals.evidence_returns_failed} evidence return(s) to the PACS failed: see "
                "`dicomcheck evidence returns`, then `--retry`",
            )
    if signals is not None or index_reachable(operations.engine):
        return JSONResponse(body)
    body.update(status="degraded", index="unreachable")
    body.setdefault("reason", "index unreachable")
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus(token: StaffToken, store: SessionDep) -> PlainTextResponse:
    _signals(store.reader.bind)  # the gauges of what waits are read from the index at each scrape
    body, content_type = metrics.exposition()
    return PlainTextResponse(body, media_type=content_type)
