"""The circuit breaker and the backoff, on an injected clock."""

from __future__ import annotations

import random

from gateway.breaker import Backoff, CircuitBreaker
from tests.conftest import FakeClock


def test_a_closed_breaker_lets_every_call_through() -> None:
    breaker = CircuitBreaker(1.0, clock=FakeClock())
    assert [breaker.allow() for _ in range(3)] == [True] * 3
    breaker.success()
    assert breaker.state == "closed"


def test_a_failure_opens_it_for_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    assert breaker.failure() is True
    assert breaker.state == "open"
    assert breaker.allow() is False
    clock.now += 0.99
    assert breaker.allow() is False


def test_calls_failing_together_open_it_once_and_do_not_extend_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    assert breaker.failure() is True
    clock.now += 0.5
    assert breaker.failure() is False  # a call that was in flight with the first one
    clock.now += 0.5
    assert breaker.allow() is True


def test_after_the_cooldown_calls_go_through_and_a_success_closes_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert [breaker.allow() for _ in range(3)] == [True] * 3  # no refusals while it recovers
    half_open = breaker.state
    breaker.success()
    assert (half_open, breaker.state) == ("half_open", "closed")
    assert breaker.allow() is True


def test_a_failure_after_the_cooldown_opens_it_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow() is True
    assert breaker.failure() is True
    assert breaker.state == "open"
    clock.now += 0.5
    assert breaker.allow() is False
    clock.now += 0.5
    assert breaker.allow() is True


def test_a_success_that_started_before_the_failure_does_not_close_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    breaker.failure()
    breaker.success()
    assert breaker.state == "open"
    assert breaker.allow() is False


def test_calls_after_the_cooldown_failing_together_reopen_it_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow() is True
    assert breaker.allow() is True
    assert [breaker.failure(), breaker.failure()] == [True, False]
    assert breaker.allow() is False


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_success() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1


def test_backoff_never_waits_past_its_cap_even_when_the_first_wait_is_longer() -> None:
    backoff = Backoff(30.0, 10.0)
    assert [backoff.next_delay() for _ in range(2)] == [10.0, 10.0]


def test_jitter_spreads_the_waits_below_the_unjittered_ones() -> None:
    backoff = Backoff(1.0, 8.0, jitter=0.5, rng=random.Random(7))  # noqa: S311 - jitter, seeded
    waits = [backoff.next_delay() for _ in range(6)]
    for wait, plain in zip(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0], strict=True):
        assert plain / 2 <= wait <= plain
    assert len(set(waits[3:])) == 3  # capped, yet not in lockstep
