"""Attempt tokens: HMAC-signed, scoped to one job attempt, expiring.

A factory holds only the token for its own attempt; a token for attempt n says nothing about
attempt n+1, so a zombie from an expired attempt cannot act on the new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass


class TokenError(Exception):
    """Missing, malformed, forged, expired or wrongly scoped token (HTTP 401/403)."""


@dataclass(frozen=True)
class AttemptToken:
    job_id: str
    attempt: int
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def issue(secret: bytes, job_id: str, attempt: int, expires: int) -> str:
    """Each token is unique (a nonce), so the token that claimed an attempt can be told apart
    from any other token issued for the same attempt."""
    payload = f"{job_id}.{attempt}.{expires}.{secrets.token_hex(8)}"
    return f"v1.{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, token: str, *, job_id: str, attempt: int, now: float) -> AttemptToken:
    parts = token.split(".")
    if len(parts) != 6 or parts[0] != "v1":
        raise TokenError("attempt token: malformed")
    _, tid, tattempt, texpires, nonce, signature = parts
    if not hmac.compare_digest(signature, _sign(secret, f"{tid}.{tattempt}.{texpires}.{nonce}")):
        raise TokenError("attempt token: bad signature")
    if tid != job_id or tattempt != str(attempt):
        raise TokenError(f"attempt token: scoped to {tid} attempt {tattempt}, not {job_id} attempt {attempt}")
    if int(texpires) < now:
        raise TokenError("attempt token: expired")
    return AttemptToken(tid, int(tattempt), int(texpires))


def fingerprint(token: str) -> str:
    """What the store keeps: never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()
