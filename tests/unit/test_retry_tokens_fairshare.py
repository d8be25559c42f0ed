"""Retry decisions, attempt tokens and per-product fair share: the pure rules the lifecycle,
the factory routes and the scheduler build on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from gigafactory.domain import fairshare, retry, tokens
from gigafactory.domain.manifest import Retry
from gigafactory.domain.retry import JITTER_FRACTION, NON_RETRYABLE
from gigafactory.domain.tokens import TokenError

# -- retry.decide -------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 3, 20])
def test_retry_until_attempts_are_exhausted(max_attempts: int) -> None:
    policy = Retry(max_attempts=max_attempts)
    for attempt in range(1, max_attempts):
        assert retry.decide(policy, job_id="j-1", attempt=attempt, reason="exit_code").retry is True
    last = retry.decide(policy, job_id="j-1", attempt=max_attempts, reason="exit_code")
    assert last.retry is False and last.delay_seconds == 0
    assert f"attempts exhausted ({max_attempts} of {max_attempts})" in last.reason
    assert last.reason.startswith("exit_code")
    beyond = retry.decide(policy, job_id="j-1", attempt=max_attempts + 1, reason="exit_code")
    assert beyond.retry is False


@pytest.mark.parametrize("reason", sorted(NON_RETRYABLE))
def test_non_retryable_reasons_never_retry(reason: str) -> None:
    decision = retry.decide(Retry(max_attempts=20), job_id="j-1", attempt=1, reason=reason)
    assert decision.retry is False
    assert decision.reason == f"{reason}: not retryable"


def test_non_retryable_set() -> None:
    assert {"non_retryable_exit", "cancelled"} <= NON_RETRYABLE
    for reason in ("exit_code", "heartbeat_timeout", "schedule_to_start_timeout", "start_to_close_timeout",
                   "launch_failed"):
        assert reason not in NON_RETRYABLE


@pytest.mark.parametrize("reason", ["heartbeat_timeout", "exit_code", "start_to_close_timeout"])
def test_retryable_decision_keeps_the_reason(reason: str) -> None:
    decision = retry.decide(Retry(), job_id="j-1", attempt=1, reason=reason)
    assert decision.retry is True and decision.reason == reason and decision.delay_seconds > 0


def _ratio(policy: Retry, attempt: int, job_id: str) -> float:
    base = policy.backoff_seconds * policy.backoff_multiplier ** (attempt - 1)
    return retry.decide(policy, job_id=job_id, attempt=attempt, reason="exit_code").delay_seconds / base


def test_backoff_grows_by_the_multiplier_within_jitter() -> None:
    policy = Retry(max_attempts=10, backoff_seconds=10, backoff_multiplier=3, max_backoff_seconds=86_400)
    for job_id in (f"j-{i}" for i in range(50)):
        delays = [retry.decide(policy, job_id=job_id, attempt=a, reason="exit_code").delay_seconds
                  for a in range(1, 6)]
        for attempt, delay in enumerate(delays, start=1):
            base = 10 * 3 ** (attempt - 1)
            assert base * (1 - JITTER_FRACTION) - 1e-3 <= delay <= base * (1 + JITTER_FRACTION) + 1e-3
        # Jitter (at most +-20%) never undoes a x3 step.
        assert delays == sorted(delays)


def test_backoff_is_capped_by_max_backoff() -> None:
    policy = Retry(max_attempts=20, backoff_seconds=60, backoff_multiplier=10, max_backoff_seconds=600)
    for job_id in (f"j-{i}" for i in range(50)):
        for attempt in range(3, 20):
            delay = retry.decide(policy, job_id=job_id, attempt=attempt, reason="exit_code").delay_seconds
            assert 600 * (1 - JITTER_FRACTION) - 1e-3 <= delay <= 600


def test_huge_growth_stays_finite_and_capped() -> None:
    policy = Retry(max_attempts=20, backoff_seconds=3600, backoff_multiplier=10, max_backoff_seconds=86_400)
    delay = retry.decide(policy, job_id="j-1", attempt=19, reason="exit_code").delay_seconds
    assert delay <= 86_400


def test_zero_backoff_retries_at_once() -> None:
    policy = Retry(max_attempts=5, backoff_seconds=0)
    assert [retry.decide(policy, job_id="j-1", attempt=a, reason="exit_code").delay_seconds
            for a in range(1, 5)] == [0, 0, 0, 0]


def test_zero_max_backoff_retries_at_once() -> None:
    policy = Retry(max_attempts=5, backoff_seconds=30, max_backoff_seconds=0)
    assert retry.decide(policy, job_id="j-1", attempt=2, reason="exit_code").delay_seconds == 0


def test_jitter_stays_within_20_percent_and_spreads() -> None:
    policy = Retry(backoff_seconds=100, backoff_multiplier=1, max_backoff_seconds=3600)
    ratios = [_ratio(policy, 1, f"job-{i}") for i in range(500)]
    assert all(1 - JITTER_FRACTION - 1e-9 <= r <= 1 + JITTER_FRACTION + 1e-9 for r in ratios)
    assert min(ratios) < 0.85 and max(ratios) > 1.15, "jitter should use most of its range"
    assert len(set(ratios)) > 400, "different jobs should not retry in lockstep"


def test_jitter_is_deterministic_per_job_and_attempt() -> None:
    policy = Retry(max_attempts=10, backoff_seconds=100, backoff_multiplier=1)
    first = retry.decide(policy, job_id="j-abc", attempt=2, reason="exit_code")
    again = retry.decide(policy, job_id="j-abc", attempt=2, reason="exit_code")
    assert first == again
    assert retry.jitter("j-abc", 2) == retry.jitter("j-abc", 2)
    assert retry.jitter("j-abc", 2) != retry.jitter("j-abc", 3)
    assert retry.jitter("j-abc", 2) != retry.jitter("j-abd", 2)
    assert all(0 <= retry.jitter(f"j-{i}", 1) < 1 for i in range(200))


# -- attempt tokens -----------------------------------------------------------------------------------------

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def _issue(job_id: str = "j-1", attempt: int = 2, expires: int = int(NOW) + 3600) -> str:
    return tokens.issue(SECRET, job_id, attempt, expires)


def test_issue_verify_round_trip() -> None:
    token = _issue()
    out = tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW)
    assert out == tokens.AttemptToken("j-1", 2, int(NOW) + 3600)


def test_token_valid_up_to_its_expiry() -> None:
    token = _issue(expires=int(NOW))
    assert tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW).expires == int(NOW)
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW + 1)


def test_wrong_job_refused() -> None:
    with pytest.raises(TokenError, match="scoped to j-1 attempt 2"):
        tokens.verify(SECRET, _issue(), job_id="j-2", attempt=2, now=NOW)


@pytest.mark.parametrize("attempt", [1, 3])
def test_wrong_attempt_refused(attempt: int) -> None:
    with pytest.raises(TokenError, match=f"not j-1 attempt {attempt}"):
        tokens.verify(SECRET, _issue(), job_id="j-1", attempt=attempt, now=NOW)


def test_other_secret_refused() -> None:
    token = tokens.issue(b"o" * 32, "j-1", 2, int(NOW) + 3600)
    with pytest.raises(TokenError, match="bad signature"):
        tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW)


def test_forged_signature_refused() -> None:
    token = _issue()
    head, _, sig = token.rpartition(".")
    forged = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(TokenError, match="bad signature"):
        tokens.verify(SECRET, forged, job_id="j-1", attempt=2, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [(1, "j-2"), (2, "3"), (3, str(int(NOW) + 10**6))],
    ids=["job", "attempt", "expiry"],
)
def test_tampered_payload_refused(field: int, value: str) -> None:
    parts = _issue().split(".")
    parts[field] = value
    with pytest.raises(TokenError, match="bad signature"):
        tokens.verify(SECRET, ".".join(parts), job_id=parts[1], attempt=int(parts[2]), now=NOW)


@pytest.mark.parametrize("token", ["", "garbage", "v1.j-1.2", "v1.j-1.2.3", "v2.j-1.2.3.sig", "v1.a.b.c.d.e.f",
                                   "Bearer v1.j-1.2.3.sig"])
def test_malformed_refused(token: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW)


def test_token_does_not_work_for_the_next_attempt() -> None:
    token = _issue(attempt=1)
    tokens.verify(SECRET, token, job_id="j-1", attempt=1, now=NOW)
    with pytest.raises(TokenError):
        tokens.verify(SECRET, token, job_id="j-1", attempt=2, now=NOW)


def test_fingerprint_is_a_stable_hash_that_hides_the_token() -> None:
    token = _issue()
    fp = tokens.fingerprint(token)
    assert fp == tokens.fingerprint(token)
    assert len(fp) == 64 and all(c in "0123456789abcdef" for c in fp)
    assert token not in fp and fp != tokens.fingerprint(_issue(attempt=3))


# -- fair share --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cand:
    id: str
    product: str
    sort_key: float


def cands(product: str, keys: list[float]) -> list[Cand]:
    return [Cand(f"{product}-{i}", product, k) for i, k in enumerate(keys)]


def by_product(picks: list[Cand]) -> Counter[str]:
    return Counter(c.product for c in picks)


def test_one_product_goes_strictly_by_score() -> None:
    pool = [Cand("a", "p", 5), Cand("b", "p", 50), Cand("c", "p", 20), Cand("d", "p", 35), Cand("e", "p", 1)]
    picks = fairshare.pick(pool, [], free=3, max_parallel=4)
    assert [c.id for c in picks] == ["b", "d", "c"]


def test_ties_broken_by_id() -> None:
    pool = [Cand("z", "p", 10), Cand("a", "p", 10), Cand("m", "p", 10)]
    assert [c.id for c in fairshare.pick(pool, [], free=2, max_parallel=4)] == ["a", "m"]


def test_two_products_share_a_pool_of_four_two_each() -> None:
    high = cands("alpha", [1000, 999, 998, 997, 996])
    low = cands("beta", [1, 0])
    picks = fairshare.pick(high + low, [], free=4, max_parallel=4)
    assert by_product(picks) == {"alpha": 2, "beta": 2}
    assert {c.id for c in picks if c.product == "alpha"} == {"alpha-0", "alpha-1"}, "best of each product first"


def test_order_of_picks_is_by_score_within_the_caps() -> None:
    picks = fairshare.pick(cands("alpha", [100, 90, 80]) + cands("beta", [95, 5]), [], free=4, max_parallel=4)
    assert [c.id for c in picks][:4] == ["alpha-0", "beta-0", "alpha-1", "beta-1"]


def test_work_conserving_when_only_one_product_waits() -> None:
    picks = fairshare.pick(cands("alpha", [9, 8, 7, 6, 5]), [], free=4, max_parallel=4)
    assert by_product(picks) == {"alpha": 4}
    assert [c.sort_key for c in picks] == [9, 8, 7, 6]


def test_work_conserving_when_the_other_product_has_too_little() -> None:
    picks = fairshare.pick(cands("alpha", [9, 8, 7, 6]) + cands("beta", [1]), [], free=4, max_parallel=4)
    assert by_product(picks) == {"alpha": 3, "beta": 1}


def test_in_flight_slots_count_against_the_share() -> None:
    candidates = cands("alpha", [100, 99, 98]) + cands("beta", [2, 1, 0])
    picks = fairshare.pick(candidates, ["alpha", "alpha"], free=2, max_parallel=4)
    assert by_product(picks) == {"beta": 2}
    picks = fairshare.pick(candidates, ["alpha"], free=3, max_parallel=4)
    assert by_product(picks) == {"alpha": 1, "beta": 2}


def test_a_product_with_only_in_flight_work_still_takes_a_share() -> None:
    candidates = cands("beta", [50, 49, 48, 47]) + cands("gamma", [10, 9, 8, 7])
    picks = fairshare.pick(candidates, ["alpha", "alpha"], free=4, max_parallel=6)
    assert by_product(picks) == {"beta": 2, "gamma": 2}


def test_in_flight_product_over_its_share_gets_only_leftovers() -> None:
    candidates = cands("alpha", [100, 99]) + cands("beta", [1])
    picks = fairshare.pick(candidates, ["alpha", "alpha", "alpha"], free=1, max_parallel=4)
    assert [c.id for c in picks] == ["beta-0"]


@pytest.mark.parametrize("free", [0, -1])
def test_no_free_slots_no_picks(free: int) -> None:
    assert fairshare.pick(cands("alpha", [1, 2]), [], free=free, max_parallel=4) == []


def test_no_candidates_no_picks() -> None:
    assert fairshare.pick([], ["alpha"], free=3, max_parallel=4) == []


def test_never_more_than_free_or_than_candidates() -> None:
    candidates = cands("alpha", [5, 4]) + cands("beta", [3])
    assert len(fairshare.pick(candidates, [], free=10, max_parallel=10)) == 3
    assert len(fairshare.pick(candidates, [], free=1, max_parallel=10)) == 1
    picks = fairshare.pick(candidates, [], free=10, max_parallel=10)
    assert len({c.id for c in picks}) == len(picks), "no candidate picked twice"
