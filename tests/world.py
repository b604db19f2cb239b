"""One stream and group on a real server with the monitor's cycle pointed at them: the `world` fixtures of
conftest.py, shared by the cycle's tests and the no-entry-lost tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis

from handler.dev.local_redis import LocalRedis
from handler.keys import StreamKeys
from handler.reclaim.cycle import ReclaimCycle
from handler.reclaim.summary import CycleSummary
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, connect
from tests import pipeline
from tests.conftest import settings_for
from tests.pipeline import IDLE_ENOUGH_MS, create_group, pending_rows

PROCESSOR = "consumer-1f20d41d-e63e-40d2-bc0f-749f11f15026"


class World:
    """One stream and group on a real server, with the monitor's cycle pointed at them."""

    def __init__(self, server: LocalRedis, client: redis.Redis, names: dict[str, str]) -> None:
        self.server, self.client, self.names = server, client, names
        self.stream = names["STREAM_NAME"]
        self.group = names["STREAM_CONSUMER_GROUP_NAME"]
        self.monitor_clients: list[Client] = []
        create_group(client, self.stream, self.group)

    def cycle(self, **overrides: Any) -> ReclaimCycle:
        settings = settings_for(self.server, self.names, **overrides)
        monitor_client = connect(settings)
        self.monitor_clients.append(monitor_client)
        return ReclaimCycle(RedisConnection(settings, monitor_client), settings)

    def run(self, **overrides: Any) -> CycleSummary:
        return self.cycle(**overrides).run()

    def abandon(
        self, entries: list[list[bytes]], consumer: str = PROCESSOR, aged: bool = True
    ) -> list[bytes]:
        """Produce entries, let a processor read them and crash; optionally make them idle long enough."""
        idle_ms = IDLE_ENOUGH_MS if aged else 0
        return pipeline.abandon(self.client, self.stream, self.group, entries, consumer, idle_ms)

    def pending(self) -> set[bytes]:
        return {row[0] for row in pending_rows(self.client, self.stream, self.group)}

    @property
    def keys(self) -> StreamKeys:
        return self.cycle().keys


def world_on(server: LocalRedis, client: redis.Redis, names: dict[str, str]) -> Iterator[World]:
    """A World for one test; the monitor's clients it made are closed after it."""
    created = World(server, client, names)
    yield created
    for monitor_client in created.monitor_clients:
        monitor_client.close()
