"""The sliding-window limiter: exact waits, per-key windows, idle keys forgotten."""

from __future__ import annotations

import pytest

from bridge.ratelimit import SlidingWindowLimiter
from tests.bridge_sinks.conftest import FakeClock


def test_limit_within_window_then_exact_wait_until_the_oldest_leaves():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 60.0, clock=clock)
    for step in (0.0, 10.0, 5.0):
        clock.advance(step)
        assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == 45.0  # first hit at t=0 leaves at t=60; now t=15
    assert limiter.wait_time("k") == 45.0
    clock.advance(44.999)
    assert limiter.try_acquire("k") == pytest.approx(0.001)
    clock.advance(0.001)  # exactly 60 s after the first hit: it has left the window
    assert limiter.try_acquire("k") == 0.0
    assert limiter.try_acquire("k") == pytest.approx(10.0)  # next to leave: the hit at t=10


def test_refused_attempts_take_no_slot():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    assert limiter.try_acquire("k") == 0.0
    for _ in range(5):
        assert limiter.try_acquire("k") == 1.0
    clock.advance(1.0)
    assert limiter.try_acquire("k") == 0.0


def test_keys_are_independent():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    assert [limiter.try_acquire("a") for _ in range(3)] == [0.0, 0.0, 60.0]
    assert [limiter.try_acquire("b") for _ in range(3)] == [0.0, 0.0, 60.0]
    assert limiter.wait_time("never-seen") == 0.0


def test_statuspage_shape_one_per_second_over_60_s():
    # Statuspage: "1 request/second per token, measured on a 60 s rolling window" -> 60 per 60 s.
    clock = FakeClock()
    limiter = SlidingWindowLimiter(60, 60.0, clock=clock)
    assert all(limiter.try_acquire("token") == 0.0 for _ in range(60))  # a burst is allowed
    assert limiter.try_acquire("token") == 60.0


def test_idle_keys_are_forgotten_after_a_window():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 60.0, clock=clock)
    for i in range(1000):
        limiter.try_acquire(f"old-{i}")
    assert limiter.tracked_keys() == 1000
    clock.advance(61.0)
    limiter.try_acquire("new")
    assert limiter.tracked_keys() == 1
    # A key is kept while it has hits inside the window (it is still limited), dropped once idle.
    for _ in range(5):
        limiter.try_acquire("busy")
    assert limiter.try_acquire("busy") == 60.0
    clock.advance(59.0)
    limiter.try_acquire("other")
    assert limiter.tracked_keys() == 3
    clock.advance(2.0)
    limiter.try_acquire("other")
    assert limiter.tracked_keys() == 1  # "new" and "busy" idle for a window: forgotten
    assert limiter.wait_time("busy") == 0.0


@pytest.mark.parametrize(
    ("limit", "window", "message"),
    [(0, 60.0, "limit must be at least 1, got 0"), (1, 0.0, "window must be positive, got 0.0")],
)
def test_bad_parameters_are_refused(limit, window, message):
    with pytest.raises(ValueError, match=message):
        SlidingWindowLimiter(limit, window)


def test_a_released_slot_is_free_again_and_others_keep_their_time():
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    assert limiter.acquire("k") == (0.0, clock.now)
    clock.advance(10.0)
    wait, stamp = limiter.acquire("k")
    assert (wait, stamp) == (0.0, clock.now)
    assert limiter.try_acquire("k") == 50.0
    limiter.release("k", stamp)  # the upstream did not count it
    assert limiter.wait_time("k") == 0.0
    limiter.release("k", stamp)  # twice is harmless
    assert limiter.acquire("k")[0] == 0.0
    assert limiter.try_acquire("k") == 50.0  # the first hit still leaves at t=60
