"""The pages run as written: every shell block of README.md and docs/ is run here, in order, one bash
session per page, from the checkout, against a Redis this test starts, and every `redis` block (an ACL rule)
goes through `redis-cli` as an operator types it. A block that cannot run on this machine (`az`, `func`,
Kusto, the benchmarks, the suite itself) says why in an HTML comment right before its fence,
`<!-- not run here: why -->`; a shell block that is neither run nor marked fails the first test.

The one change to what a page says is the server's address: `localhost:6379` and `redis-cli`'s default
port become the test server's."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import redis_62, redis_82

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
REDIS_CLI = "redis"
# What a fence may hold without being run: no commands at all.
NOT_COMMANDS = {"text", "json", ""}
NOT_RUN = re.compile(r"<!-- not run here: (?P<why>[^>]{10,}) -->")
FENCE = re.compile(r"^```(?P<language>\S*)\n(?P<body>.*?)^```\n", re.M | re.S)
# A line of an unlabelled fence that looks like a command a reader would paste.
COMMAND_LIKE = re.compile(r"^(\./|\.venv/|az |func |redis-cli|export |ACL |curl |python)", re.M)
TIMEOUT_SEC = 120
# The settings a page's `export` lines set: the test's own environment must not lend them.
PAGE_SETTINGS = re.compile(r"^(REDIS_|STREAM_|MONITORING_|MIN_IDLE|AZURE_|APPLICATIONINSIGHTS_|OTEL_)")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    body: str
    not_run_because: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.fullmatch(before.strip())
        found.append(
            Block(
                page,
                text.count("\n", 0, match.start()) + 1,
                match["language"],
                match["body"],
                marker["why"] if marker else None,
            )
        )
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def runnable(page: Path, languages: set[str]) -> list[Block]:
    return [b for b in blocks(page) if b.language in languages and b.not_run_because is None]


def test_every_block_is_run_here_or_says_why_not() -> None:
    unaccounted = [
        block.where
        for block in ALL_BLOCKS
        if block.not_run_because is None and block.language not in SHELL | {REDIS_CLI} | NOT_COMMANDS
    ]
    assert [] == unaccounted, "blocks neither run here nor marked `<!-- not run here: why -->`"
    unlabelled_commands = [
        block.where for block in ALL_BLOCKS if block.language == "" and COMMAND_LIKE.search(block.body)
    ]
    assert [] == unlabelled_commands, "commands in a fence without a language: label them bash or redis"
    markers = sum(len(NOT_RUN.findall(page.read_text())) for page in PAGES)
    assert markers == sum(block.not_run_because is not None for block in ALL_BLOCKS), (
        "a `not run here` comment that is not right before a fence"
    )


def test_what_cannot_run_here_is_marked_and_the_rest_is_not() -> None:
    """`az`, `func` and Kusto cannot run on this machine: each such block is marked, and the README's path
    (the part a newcomer runs first) is run, not marked."""
    for block in ALL_BLOCKS:
        needs_azure = re.search(r"^\s*(az|func|\(cd .* func) ", block.body, re.M) or block.language == "kusto"
        if needs_azure:
            assert block.not_run_because is not None, block.where
    readme_run = runnable(ROOT / "README.md", SHELL)
    assert any("tweets-monitor reclaim" in block.body for block in readme_run)
    assert any("tweets-monitor check" in block.body for block in readme_run)


@pytest.fixture
def fresh_redis_62() -> Iterator[LocalRedis]:
    """Redis 6.2, the `redis-server` the demo leaves in .venv/bin/, empty: the page makes what it needs."""
    server = LocalRedis(redis_62())
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def run_page(page: Path, port: int) -> subprocess.CompletedProcess[str]:
    """The page's shell blocks, in order, in one `bash -euo pipefail`, from the checkout."""
    script = "\n".join(block.body for block in runnable(page, SHELL))
    script = script.replace("localhost:6379", f"127.0.0.1:{port}")
    preamble = f'redis-cli() {{ command redis-cli -p {port} "$@"; }}\n'
    env = {name: value for name, value in os.environ.items() if not PAGE_SETTINGS.match(name)}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", preamble + script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SEC,
    )


def test_the_readme_path_runs_on_a_redis_of_ones_own(fresh_redis_62: LocalRedis) -> None:
    """Step 2's exports and a crashed processor's leftovers, the cycle that reclaims them, and step 4's
    `check` and `status`, pasted in order."""
    done = run_page(ROOT / "README.md", fresh_redis_62.port)
    assert 0 == done.returncode, done.stdout + done.stderr
    client = redis.Redis(port=fresh_redis_62.port, decode_responses=True)
    assert {"id": "1001", "user": "alice", "text": "hello world"} == client.hgetall("tweet:1001")
    assert {"id": "1002", "user": "bob", "text": "a second tweet"} == client.hgetall("tweet:1002")
    assert 0 == client.xpending("tweets_stream", "redisearch_app_group")["pending"]
    assert '"processed": 2' in done.stdout
    assert "PASS  stream and group" in done.stdout
    assert "FAIL" not in done.stdout
    client.close()


def test_every_shell_block_that_runs_is_in_a_page_this_test_runs() -> None:
    pages_with_shell = {
        block.page for block in ALL_BLOCKS if block.language in SHELL and block.not_run_because is None
    }
    assert {ROOT / "README.md"} >= pages_with_shell, "add a test that runs these pages' shell blocks"


def test_each_acl_rule_is_accepted_as_redis_cli_takes_it() -> None:
    """Each `redis` block (security.md's rules), typed into `redis-cli` as it stands (`><password>`
    included), on a fresh Redis 8.2: every line answers OK and makes its user."""
    for block in [block for block in ALL_BLOCKS if block.language == REDIS_CLI]:
        assert block.not_run_because is None, f"{block.where}: a redis block runs here"
        server = LocalRedis(redis_82())
        server.start()
        try:
            done = subprocess.run(
                [str(ROOT / ".venv" / "bin" / "redis-cli"), "-p", str(server.port)],
                input=block.body,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert 0 == done.returncode, done.stderr
            assert ["OK"] * len(block.body.strip().splitlines()) == done.stdout.split(), block.where
            client = redis.Redis(port=server.port, decode_responses=True)
            assert client.acl_getuser(block.body.split()[2]) is not None, block.where
            client.close()
        finally:
            server.cleanup()
