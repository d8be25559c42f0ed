"""Per-product fair share when releasing work into a pool.

When products compete for a pool, each may hold at most ceil(max_parallel / active products)
slots, where active products are those with queued or in-flight work in the pool. Within that
cap, work goes strictly by score. The rule is work-conserving: slots no other product can use
go to capped products in score order, so a lone product can still fill the pool.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def product(self) -> str: ...

    @property
    def sort_key(self) -> float: ...


C = TypeVar("C", bound="Candidate")


def pick(candidates: Sequence[C], inflight_products: Sequence[str], free: int,
                       max_parallel: int) -> list[C]:
    if free <= 0 or not candidates:
        return []
    ordered = sorted(candidates, key=lambda c: (-c.sort_key, c.id))
    held = Counter(inflight_products)
    active = {c.product for c in ordered} | set(held)
    share = math.ceil(max_parallel / len(active))
    picks: list[C] = []
    skipped: list[C] = []
    for cand in ordered:
        if len(picks) == free:
            break
        if held[cand.product] < share:
            picks.append(cand)
            held[cand.product] += 1
        else:
            skipped.append(cand)
    for cand in skipped:
        if len(picks) == free:
            break
        picks.append(cand)
    return picks
