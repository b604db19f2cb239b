"""Writes of one tweet within a sweep land in stream order, although parallel page workers send them.

The processor writes each entry with HSET in stream order, so for two entries of one tweet the later one's
values win. The sweep hands pages out in stream order, but its workers write them in parallel: without this
module, an older entry's page that is slower to claim could be written after a later entry's, and win.

The invariant, for every tweet key within one sweep: the hash ends as HSET of its entries in stream order
would leave it. How:

- Pages register their writes in the order they were handed out (a turnstile): page n registers after
  page n-1 has registered, or given its turn up.
- An entry registered after an older entry of the same key (from another page still being written) waits,
  before it is sent, until that write is done or has failed.
- An entry older than one registered before it (the walk wrapped round from the end of the pending list
  to its head, so older entries come last) is written with HSETNX, field by field: it fills in what the
  later entry did not set and changes nothing the later entry set, which is what HSET(older) then
  HSET(later) leaves. The later entry may already be written and forgotten, so the first segment's keys
  are remembered in a fixed-size filter (FILTER_BITS; a false positive only turns an HSET into HSETNXs).

Entries are forgotten when their page is done, so memory stays at a few pages plus the filter. Known limit:
with three or more entries of one tweet split across the wrap (two older ones after a later one), the
older two fill in fields in stream order rather than the newest first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from handler.reclaim.rules import parse_id

FILTER_BITS = 1 << 24  # 2 MiB: about 3 % false positives after 500,000 keys


@dataclass(eq=False)
class _Registered:
    entry_id: bytes
    turn: int
    done: threading.Event


@dataclass
class Ticket:
    """One page's registered writes: which to send as HSETNX, and what to wait for before sending."""

    turn: int
    fill_in_only: set[int] = field(default_factory=set)  # indices of writes to send as HSETNX
    waits: list[threading.Event] = field(default_factory=list)
    entries: list[tuple[bytes, _Registered]] = field(default_factory=list)  # (key, registration)
    done: threading.Event = field(default_factory=threading.Event)

    def wait_for_older_writes(self) -> None:
        for event in self.waits:
            event.wait()


class WriteOrder:
    """Shared by one sweep's page workers."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_turn = 0
        self._in_flight: dict[bytes, list[_Registered]] = {}
        self._first_segment = bytearray(FILTER_BITS // 8)
        self._abandoned = False

    def register(self, turn: int, wrapped: bool, writes: Sequence[tuple[bytes, bytes]]) -> Ticket:
        """Register a page's (entry id, tweet key) writes, in turn; `wrapped` when the page comes from the
        walk's second segment, back at the head of the pending list."""
        ticket = Ticket(turn)
        with self._turns:
            self._wait_for_turn(turn)
            for index, (entry_id, key) in enumerate(writes):
                registered = _Registered(entry_id, turn, ticket.done)
                earlier = self._in_flight.setdefault(key, [])
                if earlier:
                    self._order_against(index, registered, earlier, ticket)
                if wrapped:
                    if self._maybe_in_first_segment(key):
                        ticket.fill_in_only.add(index)
                else:
                    self._remember_first_segment(key)
                earlier.append(registered)
                ticket.entries.append((key, registered))
            self._pass_turn()
        return ticket

    def give_up_turn(self, turn: int) -> None:
        """A page that registers nothing (not claimed, nothing claimable, or failed first) passes its turn."""
        with self._turns:
            self._wait_for_turn(turn)
            self._pass_turn()

    def done(self, ticket: Ticket) -> None:
        """The page's writes are done or failed: whoever waits for them may go on."""
        ticket.done.set()
        with self._turns:
            for key, registered in ticket.entries:
                remaining = [r for r in self._in_flight.get(key, ()) if r is not registered]
                if remaining:
                    self._in_flight[key] = remaining
                else:
                    self._in_flight.pop(key, None)

    def abandon(self) -> None:
        """The sweep is stopping on an error: nobody waits for a turn any more."""
        with self._turns:
            self._abandoned = True
            self._turns.notify_all()

    def _order_against(
        self, index: int, registered: _Registered, earlier: list[_Registered], ticket: Ticket
    ) -> None:
        own = parse_id(registered.entry_id)
        for other in earlier:
            if other.turn == registered.turn:
                continue  # the same page: written in order on one connection
            if parse_id(other.entry_id) > own:
                ticket.fill_in_only.add(index)
            elif not other.done.is_set():
                ticket.waits.append(other.done)

    def _wait_for_turn(self, turn: int) -> None:
        while self._next_turn != turn and not self._abandoned:
            self._turns.wait()

    def _pass_turn(self) -> None:
        self._next_turn += 1
        self._turns.notify_all()

    def _remember_first_segment(self, key: bytes) -> None:
        bit = hash(key) % FILTER_BITS
        self._first_segment[bit >> 3] |= 1 << (bit & 7)

    def _maybe_in_first_segment(self, key: bytes) -> bool:
        bit = hash(key) % FILTER_BITS
        return bool(self._first_segment[bit >> 3] & (1 << (bit & 7)))
