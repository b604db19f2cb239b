"""The hot path's own RESP packing must produce exactly what hiredis produces."""

from __future__ import annotations

import pytest

from handler.transport.wire import pack, pack_hsets


@pytest.mark.parametrize(
    "fields",
    [
        [b"id", b"1", b"text", b"hello"],
        [b"id", b"", b"text", b"\x00\xff\r\n"],
        [b"id", b"x" * 5000, b"big", b"y" * 70_000],  # lengths past the prefix table
        [b"f%d" % n for n in range(600)],  # more fields than the header table
    ],
)
def test_pack_hsets_is_the_same_resp_as_hiredis(fields: list[bytes]) -> None:
    writes = [(b"tweet:1", fields), (b"tweet:\xe2\x9c\x93", fields[:2])]
    expected = b"".join(pack((b"HSET", key, *values)) for key, values in writes)
    assert expected == pack_hsets(writes)
