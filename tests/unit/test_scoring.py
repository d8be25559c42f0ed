"""The explainable score: its terms, the ordering it produces, and the time-invariance of
``sort_key`` (ordering by it equals ordering by the score at any later instant)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.domain.scoring import (
    AGE_POINTS_PER_MINUTE,
    DEFAULT_HORIZON,
    PRIORITY_POINTS,
    RETRY_PENALTY,
    SLOPE,
    URGENCY_POINTS_PER_MINUTE,
    score,
    sort_key,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def total(priority: str, submitted_at: datetime, at: datetime, deadline: datetime | None = None,
          attempt: int = 1) -> float:
    return score(priority=priority, submitted_at=submitted_at, deadline=deadline, attempt=attempt, at=at).total


# -- the breakdown --------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", ["P0", "P1", "P2", "P3"])
@pytest.mark.parametrize("deadline_in", [None, timedelta(hours=2), timedelta(minutes=-30), timedelta(days=3)])
@pytest.mark.parametrize("attempt", [1, 2, 7])
def test_breakdown_terms_add_up_to_total(priority: str, deadline_in: timedelta | None, attempt: int) -> None:
    at = T0 + timedelta(hours=5, seconds=17)
    deadline = T0 + deadline_in if deadline_in is not None else None
    s = score(priority=priority, submitted_at=T0, deadline=deadline, attempt=attempt, at=at)
    assert s.total == pytest.approx(s.priority + s.age + s.deadline_urgency - s.retry_penalty, abs=1e-9)
    assert s.priority == PRIORITY_POINTS[priority]
    assert s.age == pytest.approx(AGE_POINTS_PER_MINUTE * (5 * 60 + 17 / 60))
    assert s.retry_penalty == RETRY_PENALTY * (attempt - 1)
    assert s.sort_key == sort_key(priority=priority, submitted_at=T0, deadline=deadline, attempt=attempt)
    # The identity the store relies on: score(t) = sort_key + SLOPE * t.
    assert s.total == pytest.approx(s.sort_key + SLOPE * at.timestamp(), abs=1e-6)


def test_as_dict_carries_every_term() -> None:
    s = score(priority="P1", submitted_at=T0, deadline=None, attempt=2, at=T0 + timedelta(minutes=10))
    d = s.as_dict()
    assert set(d) == {"priority", "age", "deadline_urgency", "retry_penalty", "total", "sort_key"}
    assert d == {"priority": 2000.0, "age": pytest.approx(10.0), "deadline_urgency": pytest.approx(10.0),
                 "retry_penalty": 100.0, "total": pytest.approx(1920.0), "sort_key": s.sort_key}


def test_fresh_job_without_deadline_scores_its_priority() -> None:
    for p, points in PRIORITY_POINTS.items():
        s = score(priority=p, submitted_at=T0, deadline=None, attempt=1, at=T0)
        assert (s.age, s.deadline_urgency, s.retry_penalty, s.total) == (0, 0, 0, points)


# -- priority and aging -------------------------------------------------------------------------------


def test_priority_orders_jobs_of_equal_age() -> None:
    at = T0 + timedelta(minutes=42)
    totals = [total(p, T0, at) for p in ("P0", "P1", "P2", "P3")]
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == 4
    keys = [sort_key(priority=p, submitted_at=T0, deadline=None, attempt=1) for p in ("P0", "P1", "P2", "P3")]
    assert keys == sorted(keys, reverse=True)


def test_age_grows_linearly() -> None:
    s = score(priority="P2", submitted_at=T0, deadline=None, attempt=1, at=T0 + timedelta(hours=2))
    assert s.age == pytest.approx(120 * AGE_POINTS_PER_MINUTE)
    later = score(priority="P2", submitted_at=T0, deadline=None, attempt=1, at=T0 + timedelta(hours=4))
    assert later.total - s.total == pytest.approx(SLOPE * 2 * 3600)


# Without deadlines both age and the default-horizon urgency grow per minute waited, so a job
# gains SLOPE points per second of waiting; one priority step is worth 1000 points.
CATCH_UP = timedelta(seconds=(PRIORITY_POINTS["P2"] - PRIORITY_POINTS["P3"]) / SLOPE)


def test_catch_up_interval_is_500_minutes() -> None:
    assert timedelta(minutes=500) == CATCH_UP


def test_older_p3_outranks_a_p2_submitted_more_than_catch_up_later() -> None:
    p3_at = T0
    for p2_delay, p3_wins in [(CATCH_UP - timedelta(seconds=1), False), (CATCH_UP + timedelta(seconds=1), True)]:
        p2_at = T0 + p2_delay
        for later in (timedelta(0), timedelta(hours=3), timedelta(days=2)):
            at = p2_at + later
            assert (total("P3", p3_at, at) > total("P2", p2_at, at)) is p3_wins, (p2_delay, later)
        p3_key = sort_key(priority="P3", submitted_at=p3_at, deadline=None, attempt=1)
        p2_key = sort_key(priority="P2", submitted_at=p2_at, deadline=None, attempt=1)
        assert (p3_key > p2_key) is p3_wins


def test_p3_and_p2_tie_exactly_at_catch_up() -> None:
    p2_at = T0 + CATCH_UP
    assert total("P3", T0, p2_at + timedelta(hours=1)) == pytest.approx(total("P2", p2_at, p2_at + timedelta(hours=1)))


def test_waiting_p3_eventually_outranks_every_newly_submitted_p2() -> None:
    """A P3 queued at T0 under a steady stream of fresh P2 work starts winning after CATCH_UP."""
    for minutes in (0, 100, 499, 501, 600, 2000):
        now = T0 + timedelta(minutes=minutes)
        p3 = total("P3", T0, now)
        fresh_p2 = total("P2", now, now)
        assert (p3 > fresh_p2) is (timedelta(minutes=minutes) > CATCH_UP), minutes


# -- deadline urgency -----------------------------------------------------------------------------------


def test_deadline_urgency_counts_minutes_inside_the_horizon() -> None:
    deadline = T0 + timedelta(hours=1)
    s = score(priority="P2", submitted_at=T0, deadline=deadline, attempt=1, at=T0)
    expected = URGENCY_POINTS_PER_MINUTE * (DEFAULT_HORIZON - timedelta(hours=1)).total_seconds() / 60
    assert s.deadline_urgency == pytest.approx(expected) == pytest.approx(1380.0)


def test_nearer_deadline_ranks_higher() -> None:
    at = T0 + timedelta(minutes=5)
    near = total("P2", T0, at, deadline=T0 + timedelta(hours=1))
    far = total("P2", T0, at, deadline=T0 + timedelta(hours=10))
    none = total("P2", T0, at)
    assert near > far > none


def test_urgent_p3_can_overtake_a_p2_without_deadline() -> None:
    at = T0
    assert total("P3", T0, at, deadline=T0 + timedelta(minutes=30)) > total("P2", T0, at)
    assert total("P3", T0, at, deadline=T0 + timedelta(hours=20)) < total("P2", T0, at)


def test_urgency_keeps_growing_past_the_deadline() -> None:
    deadline = T0 + timedelta(minutes=10)
    before = score(priority="P2", submitted_at=T0, deadline=deadline, attempt=1, at=deadline)
    after = score(priority="P2", submitted_at=T0, deadline=deadline, attempt=1, at=deadline + timedelta(hours=1))
    assert after.deadline_urgency - before.deadline_urgency == pytest.approx(60 * URGENCY_POINTS_PER_MINUTE)


@pytest.mark.parametrize("far", [DEFAULT_HORIZON, DEFAULT_HORIZON + timedelta(seconds=1), timedelta(days=7),
                                 timedelta(days=365)])
def test_a_far_deadline_costs_nothing(far: timedelta) -> None:
    at = T0 + timedelta(minutes=30)
    with_deadline = score(priority="P0", submitted_at=T0, deadline=T0 + far, attempt=1, at=at)
    without = score(priority="P0", submitted_at=T0, deadline=None, attempt=1, at=at)
    assert with_deadline.deadline_urgency == pytest.approx(without.deadline_urgency)
    assert with_deadline.deadline_urgency >= 0
    # A P0 with a generous deadline still outranks a P3 with none.
    assert with_deadline.total > total("P3", T0, at)


# -- retry penalty ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_retry_penalty_per_earlier_attempt(attempt: int) -> None:
    at = T0 + timedelta(minutes=1)
    first = score(priority="P1", submitted_at=T0, deadline=None, attempt=1, at=at)
    nth = score(priority="P1", submitted_at=T0, deadline=None, attempt=attempt, at=at)
    assert nth.retry_penalty == RETRY_PENALTY * (attempt - 1)
    assert first.total - nth.total == pytest.approx(RETRY_PENALTY * (attempt - 1))
    assert first.sort_key - nth.sort_key == pytest.approx(RETRY_PENALTY * (attempt - 1))


def test_retry_penalty_does_not_drop_below_the_next_priority() -> None:
    at = T0
    assert total("P1", T0, at, attempt=5) > total("P2", T0, at)


# -- the ordering property --------------------------------------------------------------------------------
# Every instant is a whole second, so 60 * score and 60 * sort_key are integers; rounding them
# recovers the exact value and ties are compared without any tolerance.

PRIORITIES = st.sampled_from(["P0", "P1", "P2", "P3"])
SECONDS = 10 * 86_400

job_strategy = st.tuples(
    PRIORITIES,
    st.integers(min_value=0, max_value=SECONDS),  # submitted, seconds after T0
    st.one_of(st.none(), st.integers(min_value=-2 * 86_400, max_value=4 * 86_400)),  # deadline - submitted
    st.integers(min_value=1, max_value=20),  # attempt
)


def exact(value: float) -> int:
    scaled = value * 60
    rounded = round(scaled)
    assert abs(scaled - rounded) < 1e-3, f"{value} is not on the 1/60 grid"
    return rounded


@settings(max_examples=300, deadline=None, database=None)
@given(
    jobs=st.lists(job_strategy, min_size=2, max_size=25),
    gap1=st.integers(min_value=0, max_value=30 * 86_400),
    gap2=st.integers(min_value=1, max_value=30 * 86_400),
)
def test_order_by_sort_key_equals_order_by_score_at_any_later_instant(
    jobs: list[tuple[str, int, int | None, int]], gap1: int, gap2: int
) -> None:
    latest = max(sub for _, sub, _, _ in jobs)
    t1 = T0 + timedelta(seconds=latest + gap1)
    t2 = t1 + timedelta(seconds=gap2)
    params = [
        {"priority": p, "submitted_at": T0 + timedelta(seconds=sub),
         "deadline": None if dl is None else T0 + timedelta(seconds=sub + dl), "attempt": a}
        for p, sub, dl, a in jobs
    ]
    keys = [exact(sort_key(**kw)) for kw in params]
    by_key = sorted(range(len(jobs)), key=lambda i: (-keys[i], i))
    for t in (t1, t2):
        totals = [exact(score(**kw, at=t).total) for kw in params]
        by_total = sorted(range(len(jobs)), key=lambda i: (-totals[i], i))
        assert by_total == by_key
        # The same constant separates every job's score from its key at a given instant.
        offset = round(60 * SLOPE * t.timestamp())
        assert [tot - key for tot, key in zip(totals, keys, strict=True)] == [offset] * len(jobs)
