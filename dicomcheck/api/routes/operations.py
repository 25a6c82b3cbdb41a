"""Liveness, index reachability and Prometheus metrics."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from ... import __version__, metrics
from ...store.reads import index_reachable
from ...store.retention import budget_for, human_bytes
from ..deps import OperationsDep, StaffToken
from ..schemas import Health

router = APIRouter(tags=["operations"])


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
    body = {
        "status": "ok",
        "index": "reachable",
        "version": __version__,
        "registry": "none" if operations.settings.devices is None else "error" if registry.error else "ok",
    }
    if registry.error:
        body.update(
            status="degraded",
            reason=f"device registry unusable, deciding with its last good version: {registry.error}"[:500],
        )
    # Below min_free_space new instances are refused with 0xA700 (store/retention.py): degraded, still 200.
    settings = operations.settings
    space = budget_for(settings.storage_dir, settings.min_free_space_budget).space()
    body["storage"] = "unknown" if space is None else "below min_free_space" if space.below else "ok"
    if space is not None and space.below:
        body["status"] = "degraded"
        body["reason"] = "; ".join(
            filter(
                None,
                [
                    body.get("reason"),
                    f"storage volume below min_free_space ({human_bytes(space.free)} free, "
                    f"{human_bytes(space.wanted)} wanted): new instances are refused with 0xA700",
                ],
            )
        )
    if index_reachable(operations.engine):
        return JSONResponse(body)
    body.update(status="degraded", index="unreachable")
    body.setdefault("reason", "index unreachable")
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus(token: StaffToken) -> PlainTextResponse:
    body, content_type = metrics.exposition()
    return PlainTextResponse(body, media_type=content_type)
