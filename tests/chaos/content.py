"""What the checker writes to the streams: tweets (ordinary and adversarial), wide entries described by
their sizes and written raw, and the script that reads dead letters' metadata only."""

from __future__ import annotations

import random
from dataclasses import dataclass

from handler.dev.samples import tweet_id
from handler.keys import DEAD_LETTER_SUFFIX, hash_tag_of
from tests.chaos.kinds import (
    OVER_ENTRY_BOUND,
    UNDER_ENTRY_BOUND,
    WIDE_NAMES,
)


def tweet_entry(rng: random.Random, number: int) -> list[bytes]:
    """A tweet, often ordinary, sometimes adversarial: many fields, a big value, binary, repeated ids, no
    id or an empty one."""
    fields = [
        b"hashtags",
        b"covid19",
        b"id",
        tweet_id(rng.randrange(number + 1)),
        b"text",
        b"hello %d" % number,
        b"user",
        b"john",
    ]
    roll = rng.random()
    if roll < 0.06:
        fields += [part for n in range(4500) for part in (b"f%d" % n, b"v")]  # past one Lua call
        if rng.random() < 0.4:
            del fields[2:4]  # and no id: it goes to the dead-letter stream whole
    elif roll < 0.08:
        fields[5] = b"x" * 1_000_000
    elif roll < 0.16:
        fields[5] = rng.randbytes(64)
    elif roll < 0.22:
        del fields[2:4]  # no id
    elif roll < 0.26:
        fields[3] = b""
    elif roll < 0.30:
        fields += [b"text", b"a repeated name"]
    return fields


@dataclass(frozen=True)
class Wide:
    """A wide entry as the checker writes it, never held as a field list: `id`, then either `pairs` pairs
    whose names cycle over WIDE_NAMES names, each with a value of `value_len` bytes, or one value of each
    size in `big`."""

    ident: bytes
    pairs: int = 0
    value_len: int = 0
    big: tuple[int, ...] = ()

    @staticmethod
    def draw(rng: random.Random, ident: bytes, over: bool) -> Wide:
        """Many fields (100k-500k pairs) or values of several MB, under UNDER_ENTRY_BOUND or over
        OVER_ENTRY_BOUND of RESP."""
        if rng.random() < 0.5:
            if over:
                wide = Wide(ident, pairs=rng.randrange(460_000, 500_000, WIDE_NAMES), value_len=12)
            else:
                wide = Wide(ident, pairs=rng.randrange(100_000, 300_000, WIDE_NAMES), value_len=4)
        elif over:
            size = (7 << 20) + 100_000 if rng.random() < 0.3 else 4 << 20  # over both bounds, or one
            wide = Wide(ident, big=tuple(rng.randrange(size, size + (1 << 20)) for _ in range(3)))
        else:
            wide = Wide(ident, big=tuple(rng.randrange(1 << 20, 3 << 20) for _ in range(rng.randint(1, 2))))
        if wide.over != over or not (over or wide.resp_bytes < UNDER_ENTRY_BOUND):
            raise AssertionError(f"{wide} is in a band where either outcome is right")
        return wide

    def _names(self) -> list[bytes]:
        return (
            [b"f%d" % k for k in range(WIDE_NAMES)]
            if self.pairs
            else [b"big%d" % n for n in range(len(self.big))]
        )

    def fields_resp(self) -> bytes:
        """Its fields as RESP bulk strings (XADD's arguments after `*`, and XREADGROUP's reply)."""
        head = _bulk(b"id") + _bulk(self.ident)
        if self.pairs:
            block = b"".join(_bulk(name) + _bulk(b"v" * self.value_len) for name in self._names())
            return head + block * (self.pairs // WIDE_NAMES)
        return head + b"".join(
            _bulk(name) + _bulk(b"x" * size) for name, size in zip(self._names(), self.big, strict=True)
        )

    @property
    def field_count(self) -> int:
        return 1 + (self.pairs or len(self.big))

    @property
    def resp_bytes(self) -> int:
        id_pair = len(_bulk(b"id") + _bulk(self.ident))
        if self.pairs:
            per_block = sum(len(_bulk(name)) + len(_bulk(b"v" * self.value_len)) for name in self._names())
            return id_pair + per_block * (self.pairs // WIDE_NAMES)
        return id_pair + sum(
            len(_bulk(n)) + size + len(b"$%d\r\n\r\n" % size)
            for n, size in zip(self._names(), self.big, strict=True)
        )

    @property
    def over(self) -> bool:
        """Over ENTRY_MAX_BYTES, beyond the band: dead-lettered too-large however its page is read."""
        return self.resp_bytes > OVER_ENTRY_BOUND

    def value_lengths(self) -> dict[bytes, int]:
        """Its hash as HSET leaves it, as lengths (the later of repeated names wins; every value of a name
        is the same)."""
        lengths = {b"id": len(self.ident)}
        if self.pairs:
            lengths.update(dict.fromkeys(self._names(), self.value_len))
        else:
            lengths.update(zip(self._names(), self.big, strict=True))
        return lengths


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def dead_letter_of(stream: str) -> str:
    return hash_tag_of(stream) + DEAD_LETTER_SUFFIX


# A page of a dead-letter stream as ids, field counts and metadata only (a wide dead letter is never sent
# to the checker): KEYS: the dead-letter stream; ARGV: the first id, how many. Each row: {id, field count,
# the metadata (with dlq:parts and dlq:fields for a continued letter) or a part's dlq:part-of pair}.
DEAD_LETTER_HEADS_LUA = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local out = {}
for i, row in ipairs(rows) do
  local f = row[2]
  local n = 18
  if f[1] == 'dlq:part-of' then
    n = 2
  elseif f[2] == '2' then
    n = 22
  end
  local head = {}
  for j = 1, math.min(n, #f) do
    head[j] = f[j]
  end
  out[i] = {row[1], #f, head}
end
return out
"""


def _after(entry_id: bytes) -> bytes:
    """The smallest stream ID after `entry_id` (XRANGE's `(` needs Redis 6.2)."""
    ms, seq = entry_id.split(b"-")
    return b"%s-%d" % (ms, int(seq) + 1)
