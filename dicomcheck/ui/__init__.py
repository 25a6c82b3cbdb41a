"""Web pages for coders and administrators, served by ``serve`` beside the API (same tokens and roles)."""

from .pages import json_router, router

UI_ROUTERS = (router, json_router)

__all__ = ["UI_ROUTERS"]
