"""The HTTP API for the Functions host: the same FastAPI app, services built lazily.

Standing factories enroll, heartbeat and take attempt tokens here as on the embedded runtime, but
there is no broker gateway: in Azure they receive dispatches from Service Bus directly.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from gigafactory.api.app import create_app
from gigafactory.api.attempts import router as attempts_router
from gigafactory.api.factories import operator as factories_operator
from gigafactory.api.factories import router as factories_router
from gigafactory.azure import settings


def http_app() -> FastAPI:
    return create_app(settings.services, api_token=os.environ.get("GIGAFACTORY_API_TOKEN") or None,
                      dispatch_mode=lambda: os.environ.get("GIGAFACTORY_DISPATCH_MODE", "broker"),
                      extra_routers=[attempts_router, factories_router, factories_operator])
