"""Clocks for the embedded runtime.

Everything time-dependent in the embedded runtime (durable timers, leases, schedules) reads an
injected clock, so tests can jump hours ahead in microseconds instead of sleeping.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Same shape as ``gigafactory.ports.Clock``; repeated here so this package imports standalone."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    """Wall-clock time, for the real runtime."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def _require_aware(dt: datetime) -> datetime:
    # A naive datetime would compare wrongly against the aware ones everywhere else; refuse it early.
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got naive {dt!r}")
    return dt.astimezone(UTC)


class FakeClock:
    """A clock that only moves when told to, so tests control exactly when timers become due.

    Thread-safe: the embedded runtime reads it from worker threads while the test advances it.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _require_aware(start) if start is not None else datetime(2024, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: float | timedelta) -> datetime:
        """Move forward by ``delta`` (seconds or a timedelta); returns the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError("a clock advances forwards; use set() to go back in time deliberately")
        with self._lock:
            self._now = self._now + step
            return self._now

    def set(self, dt: datetime) -> None:
        """Jump to ``dt`` (either direction: going back is allowed to test clock skew)."""
        value = _require_aware(dt)
        with self._lock:
            self._now = value
