"""The cycle's pure decisions, one table each."""

from __future__ import annotations

import pytest

from handler.reclaim.rules import (
    MAX_SEQUENCE,
    DeadLetter,
    DeadLetterReason,
    PendingRow,
    claimable_ids,
    decide,
    next_id,
    parse_pending_rows,
    resp_bytes_over,
    stream_field,
    walk_start,
)


def row(entry_id: bytes, idle_ms: int, deliveries: int = 1) -> PendingRow:
    return PendingRow(entry_id, b"consumer-1", idle_ms, deliveries)


@pytest.mark.parametrize(
    ("idles", "min_idle_ms", "expected"),
    [
        ([], 10_000, []),
        ([9_999, 10_000, 10_001], 10_000, [b"1-1", b"1-2"]),  # min-idle is inclusive, as XCLAIM's
        ([0, 5], 0, [b"1-0", b"1-1"]),  # MIN_IDLE_TIME_SEC=0 takes everything
        ([1, 2, 3], 60_000, []),
    ],
)
def test_only_entries_idle_long_enough_are_claimed(
    idles: list[int], min_idle_ms: int, expected: list[bytes]
) -> None:
    rows = [row(b"1-%d" % n, idle) for n, idle in enumerate(idles)]
    assert expected == claimable_ids(rows, min_idle_ms)


@pytest.mark.parametrize(
    ("entry_id", "expected"),
    [
        (b"0-0", b"0-1"),
        (b"1620973121009-0", b"1620973121009-1"),
        (b"5-%d" % MAX_SEQUENCE, b"6-0"),  # the sequence overflows into the next millisecond
        (b"7", b"7-1"),  # an ID without a sequence means sequence 0
    ],
)
def test_next_page_starts_right_after_the_last_row(entry_id: bytes, expected: bytes) -> None:
    assert expected == next_id(entry_id)


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [(None, b"-"), (b"-", b"-"), (b"0-0", b"-"), (b"100-5", b"100-5")],  # where the last one stopped
)
def test_walk_starts_where_the_last_invocation_stopped(cursor: bytes | None, expected: bytes) -> None:
    assert expected == walk_start(cursor)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([b"id", b"1"], b"1"),
        ([b"id", b"1", b"id", b"2"], b"2"),  # repeated names: the later wins, as in HSET
        ([b"text", b"x"], None),
        ([], None),
        ([b"id", b""], b""),
    ],
)
def test_stream_field(fields: list[bytes], expected: bytes | None) -> None:
    assert expected == stream_field(fields, b"id")


@pytest.mark.parametrize(
    ("fields", "deliveries", "max_deliveries", "expected"),
    [
        ([b"id", b"42", b"text", b"hi"], 1, 10, b"tweet:42"),
        ([b"id", b"42"], 10, 10, b"tweet:42"),  # 10 does not exceed 10
        ([b"id", b"42"], 11, 10, DeadLetterReason.MAX_DELIVERIES),
        ([b"id", b"42"], 1000, 0, b"tweet:42"),  # 0 turns the rule off
        ([b"text", b"no id"], 1, 10, DeadLetterReason.MISSING_ID),
        ([b"id", b"", b"text", b"x"], 1, 10, DeadLetterReason.MISSING_ID),
        ([b"id", b"", b"id", b"7"], 1, 10, b"tweet:7"),
        ([b"id", b"7", b"id", b""], 1, 10, DeadLetterReason.MISSING_ID),
        ([b"id", b"a b:{c}\xff"], 1, 10, b"tweet:a b:{c}\xff"),
        ([b"text", b"poison and no id"], 50, 10, DeadLetterReason.MAX_DELIVERIES),
    ],
)
def test_decide_write_or_dead_letter(
    fields: list[bytes], deliveries: int, max_deliveries: int, expected: bytes | DeadLetterReason
) -> None:
    decision = decide(fields, deliveries, max_deliveries)
    if isinstance(expected, bytes):
        assert expected == decision
    else:
        assert isinstance(decision, DeadLetter)
        assert expected == decision.reason


def test_parse_pending_rows() -> None:
    reply = [[b"1-0", b"consumer-a", 15_000, 2], [b"1-1", b"monitoring_app", 3, 1]]
    assert [
        PendingRow(b"1-0", b"consumer-a", 15_000, 2),
        PendingRow(b"1-1", b"monitoring_app", 3, 1),
    ] == parse_pending_rows(reply)


@pytest.mark.parametrize(
    "fields",
    [[], [b"id", b"1"], [b"f" * 9, b"v" * 10, b"", b"x"], [b"%d" % n for n in range(2000)], [b"v" * 100_000]],
    ids=["no fields", "one pair", "lengths of one and two digits", "2000 short fields", "one long value"],
)
def test_an_entrys_size_is_counted_in_bytes_of_resp_exactly(fields: list[bytes]) -> None:
    """ENTRY_MAX_BYTES counts an entry as Redis sends it: one byte over the bound is over, at it is not."""
    entry_id = b"1700000000000-12"
    bulk = b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in fields)
    size = len(b"*2\r\n$16\r\n" + entry_id + b"\r\n" + b"*%d\r\n" % len(fields) + bulk)
    assert not resp_bytes_over(entry_id, fields, size)
    assert resp_bytes_over(entry_id, fields, size - 1)
