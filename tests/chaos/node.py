"""The one-node world: NodeRun, the run on one Redis with AOF, a proxy in front of it and a read-only
replica."""

from __future__ import annotations

import random
import time
from functools import partial

import redis

from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.redis_binaries import BINARIES
from handler.transport.client import Client
from tests.chaos.kinds import (
    FILLER_BYTES,
    FILLER_KEYS,
    LOADING_SEC,
)
from tests.chaos.processes import Reload
from tests.chaos.run import Run
from tests.proxy import FaultyProxy


class NodeRun(Run):
    """One Redis with AOF, a proxy in front of it (the handler goes through it) and a read-only replica."""

    def _start_redis(self) -> Client:
        # DEBUG RELOAD (the LOADING fault) needs the DEBUG command, off by default since Redis 7.0; 6.x has
        # no such option and refuses it.
        debug = [] if self.version.startswith("6.") else ["--enable-debug-command", "local"]
        (self.workdir / "redis").mkdir(parents=True)
        self.server = LocalRedis(
            BINARIES[self.version](), directory=self.workdir / "redis", persistent=True, extra_args=debug
        )
        self.server.start()
        self.replica = LocalRedis(
            BINARIES[self.version](), extra_args=["--replicaof", "127.0.0.1", str(self.server.port)]
        )
        try:
            self.replica.start()
        except BaseException:
            self.server.cleanup()
            raise
        self.proxy = FaultyProxy(self.server.port)
        self.filled = False  # the filler LOADING needs is written the first time
        return self.server.client()

    def _stop_redis(self) -> None:
        self.proxy.close()
        self.replica.cleanup()
        self.server.cleanup()

    def _node_clients(self) -> list[redis.Redis]:
        return [self.server.client()]

    def _server_of(self, stream: str) -> LocalRedis:
        return self.server

    def _env(self, **overrides: str) -> dict[str, str]:
        return environment_for(self.server, **self._settings(**overrides))

    def _host_env(self) -> dict[str, str]:
        return self._env(REDIS_HOST=self.proxy.address)

    def _cut(self, rng: random.Random) -> None:
        self.proxy.cut_after(rng.randrange(100, 200_000))
        try:
            self._http()
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall(self, rng: random.Random) -> None:
        try:
            self._http(fault=partial(self._stall_after, rng.uniform(0, 0.3)))
        finally:
            self.proxy.heal()
            self._abnormal()

    def _stall_after(self, delay: float) -> None:
        time.sleep(delay)
        self.proxy.stall()

    def _redis_restarted(self, rng: random.Random) -> None:
        def kill() -> None:
            time.sleep(rng.uniform(0, 0.3))
            self.server.stop(kill=True)  # what appendfsync always made durable survives

        try:
            self._http(fault=kill)
        finally:
            self.server.start()
            self.admin.close()
            self.admin = self.server.client()
            self._refusing_user()  # ACL users live in memory only
            self._abnormal()

    def _read_only_replica(self, rng: random.Random) -> None:
        """READONLY refuses the claims themselves: nothing is counted spent."""
        self._begin_cli({**self._cli_settings(rng), "REDIS_HOST": self.replica.address}).finish()

    def _loading(self, rng: random.Random) -> bool:
        """Redis answers LOADING for real while an invocation runs: DEBUG RELOAD with key-load-delay, started
        before the invocation (once clients see LOADING) or during it. Counted only if the probe saw it."""
        self._fill()
        keys = max(1, int(self.admin.dbsize()))
        self.admin.config_set("key-load-delay", max(1, int(LOADING_SEC * 1_000_000) // keys))
        reload = Reload(self.server.port)
        try:
            if rng.random() < 0.5:
                reload.start()
                reload.wait_until_loading()
                self._http()
            else:
                # Work for the invocation, so that the reload starts in its middle.
                self._abandon(rng, rng.randrange(20, 60))
                self._http(fault=partial(reload.start_after, rng.uniform(0, 0.1)))
        finally:
            reload.join()
            self.admin.config_set("key-load-delay", 0)
            self._abnormal()  # a claim made just before loading began cannot be given back during it
        return reload.saw_loading

    def _fill(self) -> None:
        if self.filled:
            return
        filler = random.Random(0)
        pipe = self.admin.pipeline(transaction=False)
        for n in range(FILLER_KEYS):
            pipe.set(f"chaos:filler:{n}", filler.randbytes(FILLER_BYTES))
        pipe.execute()
        self.filled = True
