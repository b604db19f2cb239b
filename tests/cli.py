"""The one way a test runs the command line: a real `python -m handler` process, started as an operator
starts it, from the checkout (host.json and monitor/function.json beside it), against a real server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

from handler.dev.host import APP_ROOT
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import PIPELINE_NAMES
from tests.world import World

TIMEOUT_SEC = 120.0


def env_for(server: LocalRedis, names: Mapping[str, str] = PIPELINE_NAMES, **settings: str) -> dict[str, str]:
    """The process environment pointing at `server`, with the pipeline's names (or a test's own) and entries
    idle for 10 s taken, plus `settings`."""
    return environment_for(server, **{**names, "MIN_IDLE_TIME_SEC": "10", **settings})


def cli(
    where: LocalRedis | World | Mapping[str, str],
    *args: str,
    timeout: float = TIMEOUT_SEC,
    stdin: str | None = None,
    **settings: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m handler *args`, pointed at a server (the pipeline's names), a world (its names) or an
    environment made with env_for (then `settings` must be empty: put them in the environment)."""
    if isinstance(where, LocalRedis):
        env = env_for(where, PIPELINE_NAMES, **settings)
    elif isinstance(where, World):
        env = env_for(where.server, where.names, **settings)
    else:
        assert not settings, "settings go into the environment given"
        env = dict(where)
    return subprocess.run(
        [sys.executable, "-m", "handler", *args],
        env=env,
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )
