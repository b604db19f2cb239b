"""The checker's background work: a monitor invocation in a thread with its answer and bound checked on
finish, and a DEBUG RELOAD with a probe that sees LOADING as clients see it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from tests.chaos.kinds import (
    ViolationError,
)


class Invocation:
    """One monitor invocation running in a thread; finish() joins it, checks its answer and bound, and says
    whether it may have spent a delivery (it failed, or lost its lease to another monitor)."""

    def __init__(self, run: Callable[[], Any], check: Callable[[Any], bool], bound: float) -> None:
        self._results: list[Any] = []
        self._check, self.bound = check, bound
        self._thread = threading.Thread(target=self._run, args=(run,), daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[], Any]) -> None:
        try:
            self._results.append(run())
        except Exception as exc:  # reported by finish(), in the checker's thread
            self._results.append(exc)

    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self) -> bool:
        self._thread.join(timeout=self.bound * 3 + 10)
        if not self._results:
            raise ViolationError(f"an invocation did not end within {self.bound * 3 + 10:.0f} s")
        return self._check(self._results[0])

    @property
    def result(self) -> Any:
        """What it returned (a CLI's (CompletedProcess, seconds), the host's Answer), None before it ended."""
        return self._results[0] if self._results else None

    @property
    def text(self) -> bytes:
        """The answer's body, or the CLI's output (empty before it ended)."""
        if not self._results:
            return b""
        result = self._results[0]
        if isinstance(result, tuple):
            return str(result[0].stdout).encode()
        return bytes(getattr(result, "body", b""))


class Reload:
    """DEBUG RELOAD from a background thread (the server saves its RDB and loads it back, answering LOADING
    meanwhile), and a probe that sees what clients see: a GET on a fresh connection every 20 ms."""

    def __init__(self, port: int, probe_key: bytes = b"chaos:probe") -> None:
        self.port = port
        # On a cluster, a key of the reloading node's slots: another would answer MOVED, not LOADING.
        self.probe_key = probe_key
        self.saw_loading = False
        self.error: Exception | None = None
        self._loading, self._done = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._reload, self._probe)]
        for thread in self._threads:
            thread.start()

    def start_after(self, delay: float) -> None:
        time.sleep(delay)
        self.start()

    def wait_until_loading(self, timeout: float = 5) -> None:
        self._loading.wait(timeout)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=60)
        if self.error is not None:
            raise self.error

    def _reload(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        try:
            client.execute_command("DEBUG", "RELOAD")  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            self.error = exc
        finally:
            client.close()
            self._done.set()

    def _probe(self) -> None:
        while not self._done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as probe:
                    probe.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(self.probe_key), self.probe_key))
                    reply = probe.recv(200)
            except OSError:
                reply = b""
            if reply.startswith(b"-LOADING"):
                self.saw_loading = True
                self._loading.set()
            self._done.wait(0.02)
