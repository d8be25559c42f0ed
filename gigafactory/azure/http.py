"""The HTTP API for the Functions host: the same FastAPI app, services built lazily."""

from __future__ import annotations

import os

from fastapi import FastAPI

from gigafactory.api.app import create_app
from gigafactory.api.attempts import router as attempts_router
from gigafactory.azure import settings


def http_app() -> FastAPI:
    return create_app(settings.services, api_token=os.environ.get("GIGAFACTORY_API_TOKEN") or None,
                      dispatch_mode=lambda: os.environ.get("GIGAFACTORY_DISPATCH_MODE", "broker"),
                      extra_routers=[attempts_router])
