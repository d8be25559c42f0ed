"""Who is using the store: every store operation is counted under the current caller, so the
cost of each dispatch mode is measured, not estimated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

caller: ContextVar[str] = ContextVar("gigafactory_caller", default="other")


@contextmanager
def accounted(name: str) -> Iterator[None]:
    token = caller.set(name)
    try:
        yield
    finally:
        caller.reset(token)


class OpCounter:
    """Counts by kind (``read``/``write``/``query``) and by ``caller:kind``."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.by_caller: Counter[str] = Counter()

    def count(self, kind: str) -> None:
        self.by_kind[kind] += 1
        self.by_caller[f"{caller.get()}:{kind}"] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.by_caller)
