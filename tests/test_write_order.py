"""WriteOrder, deterministically: which older page a page waits for, turns passed in order, and an abandoned
sweep letting every waiter go. Each step is driven by the test; a thread is used only where the code under
test must block, and a bug there shows as a thread still blocked (joined with a bound) or one not blocked."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from handler.reclaim.write_order import Ticket, WriteOrder, WriteOrderAbandonedError

BOUND_SEC = 5.0  # what a thread that should finish gets; one that is right finishes in microseconds


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(call()), daemon=True)
    thread.start()
    return thread, results


def finishes(thread: threading.Thread) -> bool:
    thread.join(BOUND_SEC)
    return not thread.is_alive()


def test_a_page_waits_for_the_latest_older_page_with_the_same_key_only() -> None:
    order = WriteOrder()
    first = order.register(0, [b"tweet:1", b"tweet:2"])
    second = order.register(1, [b"tweet:3"])
    third = order.register(2, [b"tweet:1"])
    fourth = order.register(3, [b"tweet:1", b"tweet:3"])
    assert [] == first.waits
    assert [] == second.waits  # no key in common
    assert [first.done] == third.waits
    # tweet:1 is held by the third page now (which waits for the first), tweet:3 by the second
    assert {id(third.done), id(second.done)} == {id(event) for event in fourth.waits}


def test_done_releases_only_the_keys_the_page_still_holds() -> None:
    order = WriteOrder()
    first = order.register(0, [b"tweet:1"])
    second = order.register(1, [b"tweet:1"])
    order.done(first)  # the second page holds tweet:1 now: the first's done must not forget it
    third = order.register(2, [b"tweet:1"])
    assert [second.done] == third.waits
    order.done(second)
    order.done(third)
    assert [] == order.register(3, [b"tweet:1"]).waits  # nothing in flight: forgotten


def test_writes_wait_until_the_older_page_is_done() -> None:
    order = WriteOrder()
    first = order.register(0, [b"tweet:1"])
    second = order.register(1, [b"tweet:1"])
    waiting, _ = in_thread(lambda: order.wait_for_older_writes(second))
    waiting.join(0.05)
    assert waiting.is_alive(), "the later page went on while the older write of its key was in flight"
    order.done(first)
    assert finishes(waiting)


def test_a_page_registers_only_in_its_turn() -> None:
    order = WriteOrder()
    later, tickets = in_thread(lambda: order.register(1, [b"tweet:1"]))
    later.join(0.05)
    assert later.is_alive(), "page 1 registered before page 0 had its turn"
    first = order.register(0, [b"tweet:1"])
    assert finishes(later)
    (ticket,) = tickets
    assert isinstance(ticket, Ticket)
    assert [first.done] == ticket.waits  # registered after page 0, so it waits for it


def test_a_turn_given_up_passes_to_the_next_page() -> None:
    order = WriteOrder()
    order.register(0, [b"tweet:1"])
    order.give_up_turn(1)
    third, _ = in_thread(lambda: order.register(2, [b"tweet:2"]))
    assert finishes(third), "the turn given up was never passed on"


def test_abandoning_lets_every_waiter_go_and_sends_nothing_more() -> None:
    order = WriteOrder()
    first = order.register(0, [b"tweet:1"])
    second = order.register(1, [b"tweet:1"])
    out_of_turn, _ = in_thread(lambda: order.register(5, [b"tweet:9"]))
    order.abandon()
    assert finishes(out_of_turn), "a page waiting for a turn that will never come was not let go"
    order.done(first)  # a failed page still sets its done
    with pytest.raises(WriteOrderAbandonedError):
        order.wait_for_older_writes(second)
