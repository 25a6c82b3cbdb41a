"""The HTTP API: study lookups for billing systems, registry, audit trail, exports."""

from .app import create_app

__all__ = ["create_app"]
