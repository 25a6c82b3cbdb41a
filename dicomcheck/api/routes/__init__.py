"""The API's routers, one module per resource, in the order the OpenAPI document lists them."""

from . import audit, devices, evidence, exports, operations, reports, sessions, studies

ROUTERS = (
    operations.router,
    studies.router,
    sessions.router,
    reports.router,
    evidence.router,
    devices.router,
    audit.router,
    exports.router,
)

__all__ = ["ROUTERS"]
