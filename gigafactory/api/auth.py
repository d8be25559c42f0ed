"""Bearer-token auth for operator routes. In Azure the host's function key guards the app
first; a token, when configured, is checked as well."""

from __future__ import annotations

import hmac

from fastapi import Request

from gigafactory.api.errors import ApiError


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def require_bearer(request: Request, what: str) -> str:
    """The bearer credential, or 401 naming what was expected."""
    token = bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", f"missing {what} (Authorization: Bearer <{what}>)",
                       {"WWW-Authenticate": "Bearer"})
    return token


def require_operator(request: Request) -> None:
    expected: str | None = request.app.state.api_token
    if expected is None:
        return
    given = bearer(request)
    if given is None:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)",
                       {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "invalid bearer token", {"WWW-Authenticate": "Bearer"})
