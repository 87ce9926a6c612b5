"""``call_interruptible``: a running Python call is stopped from outside once ``check`` raises, and
nothing is left behind (no watcher thread, no interrupt pending after the call)."""

from __future__ import annotations

import threading
import time

import pytest

from common.platform.interrupt import call_interruptible


class Stop(Exception):
    pass


def checker(after_calls: int):
    calls = {"n": 0}

    def check() -> None:
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Stop("cancelled")

    return check


def spin_forever() -> None:
    while True:
        sum(range(100))


def test_a_call_that_never_returns_is_stopped_with_what_check_raised():
    with pytest.raises(Stop, match="cancelled"):
        call_interruptible(spin_forever, checker(after_calls=2), poll_s=0.01)
    assert [t for t in threading.enumerate() if t.name == "interrupt-watcher"] == []


def test_a_library_that_catches_exception_is_still_stopped():
    def swallowing() -> None:
        while True:
            try:
                spin_forever()
            except Exception:  # noqa: BLE001 - what a library might do around its own work
                continue

    with pytest.raises(Stop):
        call_interruptible(swallowing, checker(after_calls=1), poll_s=0.01)


def test_a_call_that_finishes_returns_its_result_and_no_interrupt_fires_later():
    assert call_interruptible(lambda: 42, checker(after_calls=10**9), poll_s=0.01) == 42
    # a call that ends as check starts to raise: whichever wins, nothing fires after the call
    for _ in range(20):
        try:
            call_interruptible(lambda: time.sleep(0.01), checker(after_calls=0), poll_s=0.005)
        except Stop:
            pass
    time.sleep(0.05)
    assert sum(range(10)) == 45
    assert call_interruptible(lambda: "ok", None) == "ok"


def test_a_call_that_raises_by_itself_stops_the_watcher_before_it_returns():
    # the map fit's own epoch check raises while the watcher has seen the cancel too: no interrupt may
    # be sent after the call (it fired later in the job's ending, in a database call)
    def raising() -> None:
        raise ValueError("the call's own error")

    for _ in range(20):
        with pytest.raises((ValueError, Stop)):
            call_interruptible(raising, checker(after_calls=0), poll_s=0.001)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # bytecode running: a stray interrupt would fire here
        sum(range(100))
    assert [t for t in threading.enumerate() if t.name == "interrupt-watcher"] == []


def test_reprojection_parts_are_sized_to_check_for_a_cancel_often():
    from common.research.embeddings import REPROJECT_PART_ROWS, next_part_rows

    lo, hi = REPROJECT_PART_ROWS
    assert next_part_rows(32, 0.01) == 64  # fast: grows, at most 2× a part
    assert next_part_rows(512, 0.01) == hi  # never past the cap
    assert next_part_rows(256, 1.0) == 64  # a slow part (a million-point map): a quarter second's rows
    assert next_part_rows(64, 60.0) == lo  # never below the floor
    assert next_part_rows(32, 0.0) == 64  # a part too fast to time
