"""Telemetry (handler/telemetry/): real handlers and real `run` processes against real Redis, exporting to
stand-ins on 127.0.0.1 that decode what they receive (handler/dev/telemetry_fakes.py): Application Insights'
ingestion endpoint through the connection string's `IngestionEndpoint`, and an OTLP/HTTP collector.
Every process here has Microsoft's control plane and statsbeat off, a fresh temporary folder for the
exporter's offline storage, and a tripwire as its HTTP(S) proxy: nothing leaves the machine, and no test
can pass on what an earlier one left behind."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from handler.dev.host import APP_ROOT, HOST_VERSION, FunctionsHost, completed, envelope
from handler.dev.local_redis import LocalRedis, environment_for, free_port
from handler.dev.telemetry_fakes import (
    INSTRUMENTATION_KEY,
    Breeze,
    BreezeMetric,
    Mode,
    OtlpCollector,
    Tripwire,
    attributes,
    telemetry_environment,
    wait_for,
)
from tests.pipeline import abandon, create_group, tweet

TWEETS = 317
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
EXPORTER_NOISE = (
    "Transmission",
    "Retrying",
    "Failed to export",
    "Exception while exporting",
    "urllib3",
    "azure",
)


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    with Tripwire() as wire:
        yield wire
    assert [] == wire.attempts, "a process tried to reach something off this machine"


@pytest.fixture
def abandoned(client8: redis.Redis, names: dict[str, str]) -> str:
    """TWEETS entries a crashed processor left pending, idle long enough to be reclaimed."""
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    abandon(client8, stream, group, [tweet(n) for n in range(TWEETS)])
    return stream


def _env(
    redis_8: LocalRedis, names: dict[str, str], tmp_path: Path, tripwire: Tripwire, **more: str
) -> dict[str, str]:
    base = environment_for(
        redis_8, **names, MIN_IDLE_TIME_SEC="10", METRICS_ADDRESS=f"127.0.0.1:{free_port()}"
    )
    return telemetry_environment(base, tmp_path / f"tmp-{uuid.uuid4().hex[:8]}", tripwire, **more)


def _invoke_with_traceparent(host: FunctionsHost) -> dict[str, Any]:
    headers = {
        "Content-Type": "application/json",
        "X-Azure-Functions-InvocationId": str(uuid.uuid4()),
        "X-Azure-Functions-HostVersion": HOST_VERSION,
        "traceparent": TRACEPARENT,
    }
    answer = host.request("POST", "/monitor", json.dumps(envelope()).encode(), headers)
    document: dict[str, Any] = answer.json
    completed(answer)
    return document


def _imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if "import time:" in line}


# --- nothing without the variables ---------------------------------------------------------------------


OURS = (
    "azure.monitor",
    "opentelemetry.exporter",
    "opentelemetry.sdk._logs",
    "opentelemetry.proto",
    "handler.telemetry.export",
)


def _otel(modules: set[str]) -> set[str]:
    return {m for m in modules if m.startswith(("opentelemetry", "azure"))}


def test_without_its_variables_no_opentelemetry_is_imported(
    redis_8: LocalRedis, abandoned: str, names: dict[str, str], tmp_path: Path, tripwire: Tripwire
) -> None:
    """Without the variables, `reclaim`, `run --once` and the handler import no exporter, nothing of Azure
    Monitor and nothing of handler.telemetry.export: no OpenTelemetry module beyond those redis-py 8.1 and
    FastAPI 0.165 import by themselves (redis.observability tries opentelemetry.sdk.metrics, FastAPI its
    telemetry's API, both switched off). With a variable set, the same listing shows the exporter."""
    env = _env(redis_8, names, tmp_path, tripwire)
    libraries = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import redis, fastapi, uvicorn, prometheus_client"],
        env=env,
        cwd=APP_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    by_libraries = _otel(_imported(libraries.stderr))
    for command in (["reclaim"], ["run", "--once"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "handler", *command],
            env=env,
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert 0 == done.returncode, done.stderr[-2000:]
        imported = _imported(done.stderr)
        assert "handler.cli" in imported  # the listing is real
        assert [] == sorted(m for m in imported if m.startswith(OURS)), command
        assert set() == _otel(imported) - by_libraries, command

    launch = [sys.executable, "-X", "importtime", "-m", "handler", "serve"]
    host = FunctionsHost(env, launch=launch).start()
    try:
        assert 0 == completed(host.invoke())["processed"]  # the reclaim above took them all
    finally:
        assert 200 == host.stop(signal.SIGTERM)  # a stop the handler sees, so it flushes
    imported = _imported(host.stderr)
    assert "handler.functions.app" in imported
    assert [] == sorted(m for m in imported if m.startswith(OURS))
    assert set() == _otel(imported) - by_libraries

    with OtlpCollector() as collector:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "handler", "run", "--once"],
            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint},
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert 0 == done.returncode, done.stderr[-2000:]
    assert {
        "handler.telemetry.export",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    } <= _imported(done.stderr)
    assert not any(m.startswith("azure.monitor") for m in _imported(done.stderr))  # only what is asked for


# --- under the host ----------------------------------------------------------------------------------


def test_the_handler_exports_a_real_cycle_to_azure_monitor_and_an_otlp_collector(
    redis_8: LocalRedis, abandoned: str, names: dict[str, str], tmp_path: Path, tripwire: Tripwire
) -> None:
    """One cycle over 317 abandoned tweets, under the host with both variables set: Application Insights'
    ingestion gets `tweets_monitor_processed_entries` = 317 with the `stream` dimension, the cycle by
    outcome, its duration and the gauges; the OTLP collector gets the same, and the duration's exemplar
    carries the host's trace. No log record is sent (the host sends them), no request telemetry (the
    readiness probes included), and /metrics keeps its names."""
    with Breeze() as breeze, OtlpCollector() as collector:
        env = _env(
            redis_8,
            names,
            tmp_path,
            tripwire,
            APPLICATIONINSIGHTS_CONNECTION_STRING=breeze.connection_string,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        )
        host = FunctionsHost(env).start()
        try:
            wait_for("the telemetry start line", lambda: "telemetry: metrics to" in host.stdout)
            answer = _invoke_with_traceparent(host)
            assert TWEETS == answer["ReturnValue"]["processed"]
            assert [] == [line for line in answer["Logs"] if "telemetry" in line]

            processed = wait_for(
                "processed = 317 in Application Insights",
                lambda: [
                    p for p in breeze.metric_points("tweets_monitor_processed_entries") if p.value == TWEETS
                ],
            )
            assert {"stream": abandoned} == processed[0].properties
            assert INSTRUMENTATION_KEY == processed[0].envelope["iKey"]
            assert "Microsoft.ApplicationInsights.Metric" == processed[0].envelope["name"]
            assert any(
                p.value == 1 and p.properties == {"outcome": "end"}
                for p in breeze.metric_points("tweets_monitor_cycles")
            )
            assert any(p.count == 1 for p in breeze.metric_points("tweets_monitor_cycle_duration_seconds"))
            wait_for(
                "the gauges read from Redis",
                lambda: any(
                    p.value == 0 and p.properties == {"stream": abandoned}
                    for p in breeze.metric_points("tweets_monitor_pending_entries")
                ),
            )
            for gauge in ("tweets_monitor_oldest_pending_idle_seconds", "tweets_monitor_dead_letter_length"):
                assert any(p.properties == {"stream": abandoned} for p in breeze.metric_points(gauge)), gauge

            wait_for(
                "processed = 317 at the OTLP collector",
                lambda: (
                    ({"stream": abandoned}, TWEETS)
                    in collector.number_points("tweets_monitor_processed_entries")
                ),
            )
            assert ({"outcome": "end"}, 1) in collector.number_points("tweets_monitor_cycles")
            assert ({"stream": abandoned}, 0) in collector.number_points("tweets_monitor_pending_entries")
            (duration,) = {
                p.count: p for p in collector.histogram_points("tweets_monitor_cycle_duration_seconds")
            }.values()
            assert 1 == duration.count
            assert [(TRACE_ID, PARENT_ID)] == [
                (e.trace_id.hex(), e.span_id.hex()) for e in duration.exemplars
            ]

            scraped = host.request("GET", "/metrics").body.decode()
            assert f'tweets_monitor_processed_entries_total{{stream="{abandoned}"}} 317.0' in scraped
        finally:
            assert 200 == host.stop(signal.SIGTERM)  # a stop the handler sees, so it flushes

    assert [] == breeze.of_type("MessageData") + breeze.of_type("RequestData") + breeze.of_type(
        "ExceptionData"
    )
    assert {"/v1/metrics"} == set(collector.paths())  # no traces, no logs
    names_sent = {m.name for m in collector.metrics()}
    assert not any(name.startswith("http.") for name in names_sent), names_sent
    assert [] == [
        line for line in (host.stdout + host.stderr).splitlines() if any(n in line for n in EXPORTER_NOISE)
    ]


# --- without the host --------------------------------------------------------------------------------


@pytest.mark.parametrize("destination", ["azure-monitor", "otlp"])
def test_run_exports_its_log_records_with_the_cycles_counts(
    destination: str,
    redis_8: LocalRedis,
    abandoned: str,
    names: dict[str, str],
    tmp_path: Path,
    tripwire: Tripwire,
) -> None:
    """`run --once` (no host to send its logs): the cycle's log record arrives with its counts as
    properties, and the metrics of that one cycle are flushed before it exits."""
    with Breeze() as breeze, OtlpCollector() as collector:
        variable = (
            {"APPLICATIONINSIGHTS_CONNECTION_STRING": breeze.connection_string}
            if destination == "azure-monitor"
            else {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "handler", "run", "--once"],
            env=_env(redis_8, names, tmp_path, tripwire, **variable),
            cwd=APP_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
    assert 0 == done.returncode, done.stderr[-2000:]
    assert took < 10, took
    if destination == "azure-monitor":
        (message,) = [
            m for m in breeze.of_type("MessageData") if "reclaim cycle" in m["data"]["baseData"]["message"]
        ]
        properties = message["data"]["baseData"]["properties"]
        assert {
            "processed": "317",
            "claimed": "317",
            "failed": "0",
            "stopped_by": "end",
        }.items() <= properties.items()
        assert [TWEETS] == [
            p.value
            for p in breeze.metric_points("tweets_monitor_processed_entries")
            if p.properties == {"stream": abandoned}
        ]
    else:
        (record,) = [r for r in collector.log_records() if "reclaim cycle" in r.body.string_value]
        assert {
            "processed": TWEETS,
            "claimed": TWEETS,
            "failed": 0,
            "stopped_by": "end",
        }.items() <= attributes(record.attributes).items()
        assert "INFO" == record.severity_text
        assert ({"stream": abandoned}, TWEETS) in collector.number_points("tweets_monitor_processed_entries")
        assert set(collector.paths()) == {"/v1/metrics", "/v1/logs"}
    assert [] == [line for line in done.stderr.splitlines() if any(n in line for n in EXPORTER_NOISE)]


# --- an endpoint that cannot be reached --------------------------------------------------------------


def _stop_seconds(host: FunctionsHost) -> float:
    started = time.monotonic()
    assert 200 == host.stop(signal.SIGTERM)
    return time.monotonic() - started


def test_an_unreachable_endpoint_never_fails_or_slows_an_invocation(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], tmp_path: Path, tripwire: Tripwire
) -> None:
    """Both endpoints on closed ports: invocations still answer 200 as fast as without telemetry, nothing
    about it reaches their Logs, stderr gets one warning (at most one per 10 minutes), stdout nothing, the
    failed batches stay in this test's own storage folder, and SIGTERM stops within 2 s more than without."""
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    closed = free_port()
    plain = FunctionsHost(_env(redis_8, names, tmp_path, tripwire)).start()
    try:
        baseline = max(plain.invoke().seconds for _ in range(3))
    finally:
        plain_stop = _stop_seconds(plain)

    env = _env(
        redis_8,
        names,
        tmp_path,
        tripwire,
        APPLICATIONINSIGHTS_CONNECTION_STRING=(
            f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{closed}/"
        ),
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
    )
    host = FunctionsHost(env).start()
    try:
        wait_for("the telemetry start line", lambda: "telemetry: metrics to" in host.stdout)
        answers = []
        deadline = time.monotonic() + 6  # a dozen failed exports to each endpoint, at 500 ms
        while time.monotonic() < deadline:
            abandon(client8, stream, group, [tweet(n) for n in range(20)])
            answers.append(host.invoke())
            time.sleep(0.3)
        wait_for("the warning", lambda: "telemetry: could not send" in host.stderr)
    finally:
        stop = _stop_seconds(host)
    returns = [completed(answer) for answer in answers]
    assert all(20 == r["processed"] for r in returns), returns
    assert max(a.seconds for a in answers) < baseline + 0.5, ([a.seconds for a in answers], baseline)
    assert [] == [line for a in answers for line in a.json["Logs"] if "telemetry" in line or "export" in line]
    warnings = [line for line in host.stderr.splitlines() if "telemetry" in line]
    assert 1 == len(warnings), host.stderr[-3000:]
    assert INSTRUMENTATION_KEY not in host.stderr
    assert [] == [line for line in host.stdout.splitlines() if any(n in line for n in EXPORTER_NOISE)]
    assert stop < plain_stop + 2.5, (stop, plain_stop)
    kept = list(Path(env["TMPDIR"]).rglob("*.blob*"))
    assert kept, "the Azure exporter keeps failed batches in the process's own temporary folder"


# --- an endpoint that misbehaves ----------------------------------------------------------------------

OPERATE = APP_ROOT / "docs" / "operate.md"


def counted_once(points: list[BreezeMetric]) -> float:
    """The sum the documented queries compute: each point once, by its time, instance and dimensions (a
    batch sent again because its answer was lost is the same items again)."""
    once = {
        (
            p.envelope["time"],
            p.envelope["tags"].get("ai.cloud.roleInstance"),
            json.dumps(p.properties),
        ): p.value
        for p in points
    }
    return sum(once.values())


def _expire_leases(storage: Path) -> None:
    """The Azure exporter sends a failed batch again once its lease on disk (60 s) has passed: the leases
    end now instead."""
    for blob in storage.rglob("*.blob@*.lock"):
        blob.rename(blob.with_name(blob.name[: blob.name.rindex("@")]))


def _counter_queries(document: str) -> list[str]:
    """Every Kusto query of the document that adds up a counter's items."""
    queries = re.findall(r"```kusto\n(.*?)```", document, re.DOTALL) + re.findall(
        r"`(customMetrics[^`]*)`", document
    )
    return [" ".join(query.split()) for query in queries if "sum(valueSum)" in query]


def test_counters_reach_application_insights_counted_once_when_answers_are_lost(
    redis_8: LocalRedis, client8: redis.Redis, names: dict[str, str], tmp_path: Path, tripwire: Tripwire
) -> None:
    """Application Insights' ingestion keeps each batch but drops the connection before answering, so the
    exporter sends those batches again: what docs/operate.md's queries compute over the items received
    (each point once) is exactly what the cycles processed, and every documented query that adds up a
    counter takes each point once."""
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    with Breeze() as breeze:
        env = _env(
            redis_8, names, tmp_path, tripwire, APPLICATIONINSIGHTS_CONNECTION_STRING=breeze.connection_string
        )
        host = FunctionsHost(env).start()
        try:
            wait_for("the telemetry start line", lambda: "telemetry: metrics to" in host.stdout)
            breeze.mode = Mode.DROP
            processed = 0
            for batch in range(6):
                abandon(client8, stream, group, [tweet(n) for n in range(batch * 100, batch * 100 + 37)])
                processed += completed(host.invoke())["processed"]
                time.sleep(0.4)
            storage = Path(env["TMPDIR"])
            wait_for("batches kept on disk to send again", lambda: list(storage.rglob("*.blob*")))
            breeze.mode = Mode.ANSWER
            _expire_leases(storage)

            def sent() -> list[BreezeMetric]:
                return [
                    p
                    for p in breeze.metric_points("tweets_monitor_processed_entries")
                    if p.properties == {"stream": stream}
                ]

            wait_for("the batches sent again", lambda: sum(p.value for p in sent()) > processed)
            wait_for("every entry counted", lambda: counted_once(sent()) >= processed)
            time.sleep(1.5)  # a few more exports: nothing is counted twice, however late
        finally:
            assert 200 == host.stop(signal.SIGTERM)  # a stop the handler sees, so it flushes
    assert 6 * 37 == processed
    assert processed == counted_once(sent()), [(p.envelope["time"], p.value) for p in sent()]
    queries = _counter_queries(OPERATE.read_text())
    assert queries, "docs/operate.md documents how to add up a counter"
    assert [] == [query for query in queries if "distinct timestamp, cloud_RoleInstance" not in query]


@pytest.mark.parametrize("destination", ["azure-monitor", "otlp"])
def test_an_ingestion_endpoint_that_never_answers_is_warned_about_within_the_export_timeout(
    destination: str,
    redis_8: LocalRedis,
    client8: redis.Redis,
    names: dict[str, str],
    tmp_path: Path,
    tripwire: Tripwire,
) -> None:
    """An endpoint that accepts connections and never answers: each export gives up after
    OTEL_METRIC_EXPORT_TIMEOUT and says so on stderr (once), invocations are not slowed, the metrics
    arrive once it answers again, and a stop still takes at most its 2 s."""
    stream, group = names["STREAM_NAME"], names["STREAM_CONSUMER_GROUP_NAME"]
    create_group(client8, stream, group)
    with Breeze() as breeze, OtlpCollector() as collector:
        endpoint: Breeze | OtlpCollector = breeze if destination == "azure-monitor" else collector
        variable = (
            {"APPLICATIONINSIGHTS_CONNECTION_STRING": breeze.connection_string}
            if destination == "azure-monitor"
            else {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint}
        )
        endpoint.mode = Mode.HANG
        env = _env(redis_8, names, tmp_path, tripwire, OTEL_METRIC_EXPORT_TIMEOUT="2000", **variable)
        host = FunctionsHost(env).start()
        try:
            wait_for("the telemetry start line", lambda: "telemetry: metrics to" in host.stdout)
            started = time.monotonic()
            answers = []
            for batch in range(3):
                abandon(client8, stream, group, [tweet(n) for n in range(batch * 100, batch * 100 + 20)])
                answers.append(host.invoke())
            wait_for("the warning", lambda: "telemetry: could not send metrics" in host.stderr, timeout=12)
            warned_after = time.monotonic() - started
            endpoint.mode = Mode.ANSWER

            def arrived() -> bool:
                if destination == "azure-monitor":
                    _expire_leases(Path(env["TMPDIR"]))  # what failed meanwhile is sent again now
                    points = breeze.metric_points("tweets_monitor_processed_entries")
                    return 60 == counted_once([p for p in points if p.properties == {"stream": stream}])
                points_otlp = collector.number_points("tweets_monitor_processed_entries")
                return ({"stream": stream}, 60) in points_otlp

            wait_for("the metrics, once the endpoint answers", arrived)
        finally:
            stop = _stop_seconds(host)
    assert [20, 20, 20] == [completed(answer)["processed"] for answer in answers]
    assert max(answer.seconds for answer in answers) < 2, [answer.seconds for answer in answers]
    assert warned_after < 2 + 0.5 + 2, warned_after  # the timeout, an interval, and the start's slack
    warnings = [line for line in host.stderr.splitlines() if "telemetry" in line]
    assert 1 == len(warnings), host.stderr[-3000:]
    assert "2 s" in warnings[0], warnings[0]
    assert stop < 4, stop


# --- the gate, in process ----------------------------------------------------------------------------


def test_failed_exports_warn_at_most_every_ten_minutes_and_their_own_lines_are_kept_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from handler.telemetry.log_gate import Gate  # noqa: PLC0415  (the export's gate: this test only)

    now = [1000.0]
    gate = Gate(clock=lambda: now[0])
    gate.hide(INSTRUMENTATION_KEY)
    record = logging.LogRecord(
        "urllib3.connectionpool",
        logging.WARNING,
        __file__,
        1,
        f"Connection refused for {INSTRUMENTATION_KEY}",
        None,
        None,
    )
    with gate.exporting():
        assert not gate.filter(record)  # anything logged while exporting stays quiet, and is the reason
    assert gate.filter(record)  # the same logger elsewhere is not the exporter's
    azure = "azure.monitor.opentelemetry.exporter.export._base"
    assert not gate.filter(logging.LogRecord(azure, logging.ERROR, __file__, 1, "Data drop", None, None))
    gate.note(ConnectionRefusedError(f"refused, key {INSTRUMENTATION_KEY}"))
    with caplog.at_level(logging.WARNING, logger="handler.telemetry.export"):
        warned = [gate.report(False, "metrics", "somewhere")]
        for _ in range(5):
            now[0] += 119
            warned.append(gate.report(False, "metrics", "somewhere"))
        now[0] += 6  # 600 s after the first
        warned.append(gate.report(False, "metrics", "somewhere"))
        warned.append(gate.report(True, "metrics", "somewhere"))
    assert [True, False, False, False, False, False, True, False] == warned

    # What reading the registry logs for an export (the gauges while Redis is down): once in 10 minutes,
    # the same answer for every handler that asks about one record.
    gauges = [
        logging.LogRecord("handler.metrics", logging.WARNING, __file__, 1, "Redis down", None, None)
        for _ in range(3)
    ]
    with gate.reading():
        assert [True, True, False, False] == [
            gate.filter(r) for r in (gauges[0], gauges[0], gauges[1], gauges[1])
        ]
        now[0] += 600
        assert gate.filter(gauges[2])
    assert gate.filter(gauges[1])  # outside an export, the gauges' warnings are the scrape's, as ever
    assert 2 == len(caplog.records)
    assert INSTRUMENTATION_KEY not in caplog.text
    assert "ConnectionRefusedError: refused, key …" in caplog.text


def test_grpc_without_its_package_is_one_warning_and_no_otlp(caplog: pytest.LogCaptureFixture) -> None:
    from handler.telemetry.destinations import destinations  # noqa: PLC0415  (OpenTelemetry: this test only)

    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with caplog.at_level(logging.WARNING, logger="handler.telemetry.export"):
        assert [] == destinations(environ)
    assert ["opentelemetry-exporter-otlp-proto-grpc"] == [
        word for r in caplog.records for word in r.getMessage().split() if word.startswith("opentelemetry-")
    ]


def test_cycles_observed_while_the_exporters_start_are_observed_once_they_are_up() -> None:
    """The handler starts its exporters on a thread: a cycle that ends meanwhile is not lost, and a stop
    waits for the start no longer than its bound."""
    from handler.reclaim.summary import CycleSummary  # noqa: PLC0415
    from handler.telemetry import Telemetry, _Starting  # noqa: PLC0415

    release, observed, stopped = threading.Event(), [], []

    class Recording(Telemetry):
        def observe(self, summary: CycleSummary) -> None:
            observed.append(summary.duration_ms)

        def stop(self, within: float = 2.0) -> None:
            stopped.append(within)

    def build() -> Telemetry:
        release.wait(5)
        return Recording()

    starting = _Starting(build)
    starting.observe(CycleSummary(duration_ms=12))
    assert [] == observed
    release.set()
    wait_for("the exporters", lambda: observed)
    starting.observe(CycleSummary(duration_ms=34))
    assert [12, 34] == observed
    starting.stop(within=1.0)
    assert 1 == len(stopped) and 0 < stopped[0] <= 1.0

    def slow_build() -> Telemetry:
        time.sleep(3)
        return Recording()

    slow = _Starting(slow_build)
    started = time.monotonic()
    slow.stop(within=0.3)
    assert time.monotonic() - started < 1
