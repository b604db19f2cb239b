"""Where the last invocation stopped walking the pending list (`{<stream>}:cursor:<group>`).

Only a hint: a value that is not a stream ID, or a key of another type, is ignored with a warning (the walk
starts from the head) and replaced when the cycle saves its own. The cycle and the dry run read it here, the
same way; the cycle saves it through the lease (lease.py), so a monitor that stalled past its lease cannot
overwrite its successor's.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from handler.keys import display_name, raw_name
from handler.reclaim.rules import is_stream_id
from handler.transport.client import Client

log = logging.getLogger(__name__)

CURSOR_TTL_MS = 24 * 3600 * 1000  # a forgotten cursor only costs one walk from the start


def read_cursor(client: Client, key: str) -> bytes | None:
    try:
        value: Any = client.get(raw_name(key))
    except redis.exceptions.ResponseError as exc:  # WRONGTYPE: somebody's key of another type
        log.warning("ignoring the cursor %s: %s", display_name(key), exc)
        return None
    if value is None or is_stream_id(value):
        return value if value is None else bytes(value)
    log.warning(
        "ignoring the cursor %s: %r is not a stream ID; walking from the head", display_name(key), value[:100]
    )
    return None
