"""Retry decisions: pure, deterministic (jitter is derived from the job and attempt, never
from a random source), so the orchestrator can replay them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gigafactory.domain.manifest import Retry

# Reasons that no new attempt can fix.
NON_RETRYABLE = frozenset({"non_retryable_exit", "invalid_manifest", "profile_missing", "cancelled"})
JITTER_FRACTION = 0.2


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float
    reason: str


def jitter(job_id: str, attempt: int) -> float:
    """A stable number in [0, 1) for this attempt."""
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def backoff_seconds(policy: Retry, attempt: int, job_id: str) -> float:
    """Exponential backoff after attempt ``attempt`` failed, capped, with +-20% jitter."""
    base = policy.backoff_seconds * policy.backoff_multiplier ** max(attempt - 1, 0)
    capped = min(base, policy.max_backoff_seconds)
    factor = 1 - JITTER_FRACTION + 2 * JITTER_FRACTION * jitter(job_id, attempt)
    return round(min(capped * factor, policy.max_backoff_seconds), 3)


def decide(policy: Retry, *, job_id: str, attempt: int, reason: str) -> RetryDecision:
    if reason in NON_RETRYABLE:
        return RetryDecision(False, 0.0, f"{reason}: not retryable")
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, f"{reason}: attempts exhausted ({attempt} of {policy.max_attempts})")
    return RetryDecision(True, backoff_seconds(policy, attempt, job_id), reason)
