"""How the Functions host starts, hears, stops, times out and restarts the handler, played by
handler/dev/host.py from the host's source: what each exit code of the worker makes the host do, the host
stopping (the timer's drain, then a kill), a function timeout (a kill and a restart), and the handler's own
exits (`serve`) judged by what the host then does. Fake workers drive the exit codes exactly; the real handler
shows its own."""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from handler.dev.host import (
    ERRORS_BEFORE_SHUTDOWN,
    FunctionsHost,
    FunctionTimedOutError,
    completed,
)
from handler.dev.local_redis import LocalRedis, environment_for
from handler.dev.samples import PIPELINE_NAMES
from tests import pipeline
from tests.pipeline import create_group, tweet, tweet_keys

NAMES = PIPELINE_NAMES
ROOT = Path(__file__).resolve().parent.parent
SIGKILLED = -9

# A worker that answers the readiness probe and the invocation, and exits with the code POSTed to /exit.
FAKE_WORKER = textwrap.dedent(
    """
    import http.server, os, sys, threading
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            self._answer(b"{}")
        def do_POST(self):
            if self.path.startswith("/exit/"):
                self._answer(b"{}")
                self.wfile.flush()
                print("fatal: leaving with", self.path, file=sys.stderr, flush=True)
                os._exit(int(self.path.rsplit("/", 1)[1]))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._answer(b'{"Outputs": {}, "Logs": [], "ReturnValue": {"ok": true}}')
        def log_message(self, *args):
            pass
    port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def fake() -> Iterator[FunctionsHost]:
    host = FunctionsHost({}, launch=[sys.executable, "-c", FAKE_WORKER]).start()
    yield host
    host.stop()


def leave_with(host: FunctionsHost, code: int) -> None:
    """The worker exits with `code`; returns once the host has dealt with the exit."""
    seen = len(host.exits)
    with contextlib.suppress(OSError, http.client.HTTPException):  # it may leave before its answer is read
        host.request("POST", f"/exit/{code}")
    host.wait_until(lambda: len(host.exits) > seen, f"the host hears exit {code}")


def test_exit_0_closes_the_worker_for_good_and_every_later_invocation_is_refused(fake: FunctionsHost) -> None:
    leave_with(fake, 0)
    assert fake.closed and 1 == fake.workers_started
    with pytest.raises(ConnectionRefusedError):
        fake.invoke()
    assert 1 == fake.workers_started  # nothing restarts it but a restart of the whole host


def test_exit_200_restarts_the_worker_without_counting_an_error(fake: FunctionsHost) -> None:
    for n in range(ERRORS_BEFORE_SHUTDOWN + 2):
        leave_with(fake, 200)
        fake.wait_until_ready()
        assert n + 2 == fake.workers_started
    assert fake.running and [] == fake.errors
    assert {"ok": True} == completed(fake.invoke())


def test_the_third_error_within_30_minutes_shuts_the_host_down(fake: FunctionsHost) -> None:
    leave_with(fake, 1)
    fake.wait_until_ready()
    leave_with(fake, 2)
    fake.wait_until_ready()
    assert fake.running and 3 == fake.workers_started
    leave_with(fake, 1)
    assert not fake.running and 3 == fake.workers_started
    assert "Exceeded http worker restart retry count. Shutting down Functions Host" in fake.events
    # The host's error names the exit code and the worker's last error lines on stderr.
    assert "exited with code 1" in fake.errors[-1] and "fatal: leaving with /exit/1" in fake.errors[-1]


def test_errors_further_apart_than_30_minutes_start_the_count_again(fake: FunctionsHost) -> None:
    now = [0.0]
    fake.clock = lambda: now[0]
    for _ in range(ERRORS_BEFORE_SHUTDOWN - 1):
        leave_with(fake, 1)
        fake.wait_until_ready()
    now[0] += 30 * 60 + 1
    leave_with(fake, 1)
    fake.wait_until_ready()
    assert fake.running and ERRORS_BEFORE_SHUTDOWN + 1 == fake.workers_started


# A worker whose every answer to an invocation is cut after its first bytes, as when it is killed mid-answer.
CUTTING_WORKER = textwrap.dedent(
    """
    import http.server, os, socket
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"Outputs"')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        def log_message(self, *args):
            pass
    port = int(os.environ["FUNCTIONS_CUSTOMHANDLER_PORT"])
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def test_an_answer_cut_short_is_handed_to_the_caller_of_a_background_invocation() -> None:
    """The handler killed while its answer is on the wire: the broken answer reaches the caller, as a
    dropped connection does, instead of ending the invoking thread with an exception nobody sees."""
    host = FunctionsHost({}, launch=[sys.executable, "-c", CUTTING_WORKER]).start()
    try:
        thread, answers = host.invoke_in_background()
        thread.join(timeout=30)
        assert [http.client.IncompleteRead] == [type(answer) for answer in answers]
    finally:
        host.stop()


def test_a_worker_that_never_answers_the_probe_is_an_error() -> None:
    host = FunctionsHost({}, launch=[sys.executable, "-c", "import time; time.sleep(60)"])
    host.initialization_timeout_sec = 0.5
    with pytest.raises(AssertionError, match="did not answer GET /"):
        host.start()
    host.wait_until(lambda: not host.running, "the host shuts down", timeout=30)
    assert ERRORS_BEFORE_SHUTDOWN == len(host.errors) == host.workers_started
    host.stop()


# --- the real handler ------------------------------------------------------------------------------------


def handler_env(server: LocalRedis, **settings: str) -> dict[str, str]:
    return environment_for(server, **{**NAMES, "MIN_IDLE_TIME_SEC": "10", **settings})


def abandon(client: redis.Redis, count: int) -> None:
    pipeline.abandon(
        client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], [tweet(n) for n in range(count)]
    )


def under_way(client: redis.Redis) -> None:
    pipeline.wait_until_claiming(
        client, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"], "monitoring_app"
    )


def test_serve_exits_200_after_a_signal_so_the_host_restarts_it(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """An operator's SIGTERM (the host itself never sends one): exit 0 would close the worker for good."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    host = FunctionsHost(handler_env(redis_8)).start()
    try:
        host.send_signal(signal.SIGTERM)
        host.wait_until(lambda: host.exits, "the handler exits")
        assert [200] == host.exits, host.stderr
        host.wait_until_ready()
        assert 2 == host.workers_started and [] == host.errors
        abandon(client8, 3)
        assert 3 == completed(host.invoke())["processed"]
    finally:
        host.stop()


def test_a_windows_time_zone_name_never_stops_serve(redis_8: LocalRedis) -> None:
    """WEBSITE_TIME_ZONE is the host's (it schedules the timer); serve does not use it, so a Windows zone
    name copied from another plan must not make it exit 2 three times and shut the host down."""
    host = FunctionsHost(handler_env(redis_8, WEBSITE_TIME_ZONE="GMT Standard Time")).start()
    try:
        assert host.running and [] == host.exits
        assert 200 == host.request("GET", "/").status
    finally:
        host.stop()


def test_serve_exits_nonzero_when_it_cannot_listen_so_the_host_counts_an_error(redis_8: LocalRedis) -> None:
    """A port already taken: uvicorn gives up at start; exit 0 would tell the host never to try again."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        host = FunctionsHost(handler_env(redis_8), port=taken.getsockname()[1])
        host.initialization_timeout_sec = 5
        with pytest.raises(AssertionError):
            host.start()
        host.wait_until(lambda: host.exits, "the handler exits")
        host.stop()
    assert host.exits and 0 not in host.exits and host.errors, host.stderr


def test_bad_settings_exit_2_and_the_third_start_shuts_the_host_down(redis_8: LocalRedis) -> None:
    env = handler_env(redis_8)
    env.pop("STREAM_NAME")
    host = FunctionsHost(env)
    with pytest.raises(AssertionError, match="exited at start"):
        host.start()
    host.wait_until(lambda: not host.running, "the host shuts down", timeout=60)
    host.stop()
    assert [2] * ERRORS_BEFORE_SHUTDOWN == host.exits
    assert "STREAM_NAME: is required but not set" in host.errors[-1]  # the host shows stderr's last lines


def test_the_host_stops_after_the_scheduled_invocation_and_kills_the_handler_without_a_signal(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    """The timer listener waits for the running invocation, then the worker is killed (SIGKILL): the cycle
    is never told to stop, and nothing it claimed is left half done."""
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    abandon(client8, 20_000)
    host = FunctionsHost(handler_env(redis_8, RECLAIM_PAGE_SIZE="200", CYCLE_TIME_BUDGET_SEC="60")).start()
    invocation, answers = host.invoke_in_background()
    under_way(client8)
    assert SIGKILLED == host.stop()
    invocation.join(timeout=60)
    summary = completed(answers[0])
    assert (20_000, "end") == (summary["processed"], summary["stopped_by"])
    assert "received" not in host.stderr  # no signal ever reached it
    assert 20_000 == len(tweet_keys(client8))


def test_a_function_timeout_fails_the_invocation_and_the_host_kills_and_restarts_the_handler(
    redis_8: LocalRedis, client8: redis.Redis
) -> None:
    create_group(client8, NAMES["STREAM_NAME"], NAMES["STREAM_CONSUMER_GROUP_NAME"])
    abandon(client8, 2_000)
    # 200 entries a second: a cycle of about 10 s, far past the function timeout
    host = FunctionsHost(
        handler_env(redis_8, RECLAIM_PAGE_SIZE="50", CYCLE_TIME_BUDGET_SEC="60", RECLAIM_MAX_RATE="200")
    ).start()
    host.function_timeout_sec = 1.0
    try:
        with pytest.raises(FunctionTimedOutError):
            host.invoke()
        host.wait_until(lambda: host.workers_started == 2, "the restart")
        host.wait_until_ready()
        assert [] == host.exits and [] == host.errors  # a kill the host made is no error
        assert any("A function timeout has occurred" in event for event in host.events)
        host.function_timeout_sec = 300
        summary = completed(host.invoke())  # the new worker answers; the killed one's lease still runs
        assert "skipped" == summary["stopped_by"] and "lease held by" in summary["skipped"]
    finally:
        host.stop()


def test_a_host_restart_kills_the_worker_and_starts_a_new_one(redis_8: LocalRedis) -> None:
    """Deploy, settings change or a restart from the portal: the host stops (drain, kill) and starts again."""
    host = FunctionsHost(handler_env(redis_8)).start()
    try:
        first = host.process
        host.restart()
        assert first is not None and SIGKILLED == first.returncode
        assert host.running and 2 == host.workers_started and 200 == host.request("GET", "/").status
    finally:
        host.stop()


# --- what the docs say the host does --------------------------------------------------------------------


def test_the_docs_say_what_the_host_does_at_each_moment_and_what_only_azure_confirms() -> None:
    operate = (ROOT / "docs" / "operate.md").read_text()
    section = operate.split("## Under the Functions host", 1)[1].split("\n#", 1)[0]
    for moment in ("start", "exit", "timeout", "kill", "restart", "only in Azure"):
        assert moment in section, moment
    assert "SIGKILL" in section and "200" in section
    readme = (ROOT / "README.md").read_text()
    step_8 = readme.split("\n8. ", 1)[1].split("\n9. ", 1)[0]
    assert "SIGKILL" in step_8 and "exits 0" not in step_8


def test_the_docs_say_an_admin_run_refreshes_the_heartbeat_and_name_the_flex_risk() -> None:
    operate = (ROOT / "docs" / "operate.md").read_text()
    heartbeat = operate.split("## The heartbeat", 1)[1].split("\n#", 1)[0]
    assert "/admin/functions/monitor" in heartbeat and "TimerTriggerBinding" in heartbeat
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "Azure/Azure-Functions#2643" in deploy
