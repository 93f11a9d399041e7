"""The timer's hand-over of due persons to rounds: what a round takes stays until it is done."""

from __future__ import annotations

from leadback.audiences.due_waiting import ROUNDS_RUNNING_S, DueWaiting


def test_a_round_takes_a_chunk_and_what_it_did_not_finish_stays() -> None:
    waiting = DueWaiting()
    assert waiting.add([("a", "p1"), ("a", "p2"), ("b", "p3"), ("a", "p1")]) == 3
    first = waiting.take(2)
    assert first == {"a": {"p1", "p2"}}
    assert waiting.take(2) == first  # not done yet: a failed round leaves them waiting
    waiting.done(first)
    assert waiting.take(2) == {"b": {"p3"}}
    assert waiting.add([("c", "p4")]) == 2
    assert waiting.drain() == [("b", "p3"), ("c", "p4")]
    assert waiting.take(10) == {}


def test_rounds_count_as_running_for_a_second_after_one_ended() -> None:
    waiting = DueWaiting()
    assert not waiting.rounds_running(0.0)
    waiting.round_started(9.5)
    waiting.round_ended(10.0)
    assert waiting.rounds_running(10.0 + ROUNDS_RUNNING_S / 2)
    assert not waiting.rounds_running(10.0 + ROUNDS_RUNNING_S)


def test_a_round_in_progress_counts_as_running_however_long_it_takes() -> None:
    """Under load a round takes seconds: the timer must still hand its due persons over (it
    evaluated them itself, and the next round waited for the lock)."""
    waiting = DueWaiting()
    waiting.round_started(10.0)
    assert waiting.rounds_running(10.0 + 5 * ROUNDS_RUNNING_S)
    waiting.round_ended(16.0)
    assert waiting.rounds_running(16.0 + ROUNDS_RUNNING_S / 2)
    assert not waiting.rounds_running(16.0 + ROUNDS_RUNNING_S)
