"""Recording the commands a real server receives from the monitor (SLOWLOG with a zero threshold)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

MONITOR_CLIENT_NAME = b"tweets-monitor"


@contextmanager
def recorded_commands(client: redis.Redis) -> Iterator[list[list[bytes]]]:
    """Every command the monitor's connections sent inside the block, as argument lists.

    SLOWLOG keeps the first 32 arguments of a command (the rest become one "... (N more arguments)").
    """
    old: Any = client.config_get("slowlog-*")
    client.config_set("slowlog-max-len", 1_000_000)
    client.config_set("slowlog-log-slower-than", 0)
    client.slowlog_reset()
    commands: list[list[bytes]] = []
    try:
        yield commands
    finally:
        entries: Any = client.execute_command("SLOWLOG", "GET", 1_000_000)  # type: ignore[no-untyped-call]
        client.config_set("slowlog-log-slower-than", old["slowlog-log-slower-than"])
        client.config_set("slowlog-max-len", old["slowlog-max-len"])
    for entry in reversed(entries):  # newest first: [id, time, duration, args, address, client name]
        if entry[5] == MONITOR_CLIENT_NAME:
            commands.append(list(entry[3]))


def named(commands: list[list[bytes]], name: bytes) -> list[list[bytes]]:
    return [args for args in commands if args[0].upper() == name]
