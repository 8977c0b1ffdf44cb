"""The reservation ledger: a load's memory is spoken for until a reading that can see it."""

from __future__ import annotations

from proxy.gate.decision import Reservation
from proxy.gate.reservations import ReservationLedger


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_reading_started_before_the_answer_still_needs_the_reservation() -> None:
    clock = Clock()
    ledger = ReservationLedger(clock)
    a = Reservation("a:latest", ((0, 5),))
    token = ledger.hold(a)
    assert ledger.pending(read_started=99.0) == (a,)
    clock.now = 101.0
    ledger.answered(token)
    assert ledger.pending(read_started=100.5) == (a,)  # that reading may not show the model yet
    assert ledger.pending(read_started=101.5) == ()  # this one does: the model itself is counted


def test_a_load_that_never_answers_expires_and_is_reported() -> None:
    clock = Clock()
    ledger = ReservationLedger(clock, ttl=10.0)
    a = Reservation("a:latest", ((0, 5),))
    ledger.hold(a)
    clock.now += 11
    assert ledger.pending(read_started=clock.now) == ()
    assert ledger.expired == [a] and len(ledger) == 0


def test_one_runner_per_model_counts_once_at_its_largest() -> None:
    ledger = ReservationLedger(Clock())
    small, large = Reservation("a:latest", ((0, 5),)), Reservation("a:latest", ((0, 9),))
    other = Reservation("b:latest", ((0, 3),))
    for r in (small, large, other):
        ledger.hold(r)
    assert sorted(ledger.pending(read_started=0.0), key=lambda r: r.model) == [large, other]
