"""Writes of one tweet within an invocation land in stream order, although parallel page workers send them.

The processor writes each entry with HSET in stream order, so for two entries of one tweet the later one's
values win. One invocation walks the pending list in stream order (it never wraps round: rules.walk_start)
and hands pages out in that order, but its workers write them in parallel: without this module, an older
entry's page that is slower to claim could be written after a later entry's, and win.

The invariant, for every tweet key within one invocation: the hash ends as HSET of its entries in stream
order would leave it. How:

- Pages register their writes in the order they were handed out (a turnstile): page n registers after
  page n-1 has registered, or given its turn up. So every entry already registered is older.
- A page with a key that an older page still has in flight waits, before it sends its writes, until that
  page's writes are done or have failed. (Keys twice in one page are written in order on one connection.)

Entries are forgotten when their page is done, so memory stays at a few pages. Across invocations the
order is not kept: an older entry left pending (refused, not idle yet) and written by a later invocation
wins over a newer one written before it, as it would if the processor itself retried it late.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field


class WriteOrderAbandonedError(RuntimeError):
    """The sweep stopped on an error while this page waited: it sends nothing (its entries stay pending)."""


@dataclass(eq=False)
class Ticket:
    """One page's registered writes, and the older writes of the same keys to wait for before sending."""

    turn: int
    keys: set[bytes] = field(default_factory=set)
    waits: list[threading.Event] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


class WriteOrder:
    """Shared by one sweep's page workers."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._next_turn = 0
        # key -> the latest page that registered a write of it and is not done. Waiting for that page is
        # enough: it writes only after every older page with the key is done.
        self._holders: dict[bytes, Ticket] = {}
        self._abandoned = False
        self._exclusive: Ticket | None = None  # a page of keys unknown when it registers (register_exclusive)

    def register(self, turn: int, keys: Iterable[bytes]) -> Ticket:
        """Register the tweet keys a page writes, in its turn; call done() with the ticket when written.
        Set operations keep this cheap for a page of thousands of keys with no conflict (the usual case)."""
        ticket = Ticket(turn, set(keys))
        with self._turns:
            self._wait_for_turn(turn)
            try:
                holders = self._holders
                older = {holders[key] for key in ticket.keys & holders.keys()}
                ticket.waits = [page.done for page in older]
                if self._exclusive is not None:
                    ticket.waits.append(self._exclusive.done)
                holders.update(dict.fromkeys(ticket.keys, ticket))
            except BaseException:
                ticket.done.set()  # nobody may wait on a page that will never write
                raise
            finally:
                self._pass_turn()
        return ticket

    def register_exclusive(self, turn: int) -> Ticket:
        """Register, in its turn, a page whose keys are not known yet (it reads its entries a few at a time,
        reclaim/page.py): it waits for every older page in flight, and every newer page waits for it."""
        ticket = Ticket(turn)
        with self._turns:
            self._wait_for_turn(turn)
            ticket.waits = [page.done for page in set(self._holders.values())]
            if self._exclusive is not None:
                ticket.waits.append(self._exclusive.done)
            self._exclusive = ticket
            self._pass_turn()
        return ticket

    def wait_for_older_writes(self, ticket: Ticket) -> None:
        """Before a page sends its writes. Raises WriteOrderAbandonedError when the sweep stopped meanwhile: a
        page must not start talking to a Redis that already failed another page (each new attempt could
        cost another timeout)."""
        for event in ticket.waits:
            event.wait()
        if self._abandoned:
            raise WriteOrderAbandonedError("the sweep stopped on an error before this page was written")

    def give_up_turn(self, turn: int) -> None:
        """A page that registers nothing (not claimed, or failed before its writes) passes its turn."""
        with self._turns:
            self._wait_for_turn(turn)
            self._pass_turn()

    def done(self, ticket: Ticket) -> None:
        """The page's writes are done or failed: whoever waits for them may go on."""
        ticket.done.set()
        with self._turns:
            if self._exclusive is ticket:
                self._exclusive = None
            holders = self._holders
            for key in ticket.keys:
                if holders.get(key) is ticket:
                    del holders[key]

    def abandon(self) -> None:
        """The sweep is stopping on an error: nobody waits for a turn any more."""
        with self._turns:
            self._abandoned = True
            self._turns.notify_all()

    def _wait_for_turn(self, turn: int) -> None:
        while self._next_turn != turn and not self._abandoned:
            self._turns.wait()

    def _pass_turn(self) -> None:
        self._next_turn += 1
        self._turns.notify_all()
