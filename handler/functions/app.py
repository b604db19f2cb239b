"""The Functions host protocol: a thin FastAPI adapter around the reclaim cycle.

GET / is the host's readiness probe; POST /monitor (the function folder's name) runs one cycle and answers
in the host's shape. Errors are JSON with `error`, and also go to stderr, because the host throws away the
`Logs` of a non-2xx answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from handler.errors import MonitorError, RedisUnavailableError
from handler.functions.envelope import BadEnvelopeError, TimerInfo, invocation_response, parse_invocation
from handler.logs import capture_logs
from handler.metrics import CycleFailure, Metrics
from handler.reclaim.streams import StreamsCycle
from handler.reclaim.summary import CycleSummary
from handler.settings import MonitorSettings
from handler.transport.connect import RedisConnection

log = logging.getLogger(__name__)

FUNCTION_NAME = "monitor"
MAX_BODY_BYTES = 1024 * 1024  # the host's envelope is well under 1 KB; a retry context adds a little
INVOCATION_ID_HEADER = "x-azure-functions-invocationid"


class _InvocationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(settings: MonitorSettings, stop: threading.Event | None = None) -> FastAPI:  # noqa: PLR0915
    """The handler's app; `stop` is set on SIGTERM/SIGINT so a running cycle ends after its page."""
    stop_requested = stop or threading.Event()
    one_cycle_at_a_time = threading.Lock()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = RedisConnection(settings)  # connects on the first invocation, not at start
        app.state.cycle = StreamsCycle(connection, settings)
        metrics.watch_group(connection, settings)
        from handler.telemetry import start_telemetry  # noqa: PLC0415  (no OpenTelemetry unless it is asked for)

        # Exports those metrics (not logs: the host sends those); starts on a thread, readiness never waits.
        app.state.telemetry = telemetry = start_telemetry(metrics, export_logs=False, wait=False)
        try:
            yield
        finally:
            telemetry.stop()  # flushes for at most 2 s, before the gauges' connection closes
            connection.close()

    app = FastAPI(
        title="tweets-monitor",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # "/monitor/" is an unknown path (404), not a redirect the host won't follow
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        # A sync route: scraping reads three gauges from Redis, off the event loop.
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(f"/{FUNCTION_NAME}")
    async def monitor(request: Request) -> JSONResponse:
        telemetry = request.app.state.telemetry  # the host's traceparent, if any, is the cycle's context
        with (
            capture_logs(request.headers.get(INVOCATION_ID_HEADER) or "-") as lines,
            telemetry.invocation(request.headers),
        ):
            try:
                summary = await invoke(request)
            except _InvocationError as exc:
                log.error("invocation failed (HTTP %d): %s", exc.status, exc.message)
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            telemetry.observe(summary)
            return JSONResponse(invocation_response(lines, summary.as_dict()))

    async def invoke(request: Request) -> CycleSummary:
        _require_json(request.headers.get("content-type"))
        timer = _parse_or_400(await _read_body(request))
        if timer.IsPastDue:
            log.info("the timer is past due; running one cycle now")
        if not one_cycle_at_a_time.acquire(blocking=False):
            busy = CycleSummary.skipped_because("a cycle is already running here")
            log.info(busy.log_line())
            metrics.observe(busy, settings.STREAM_NAME)
            return busy
        try:
            cycle: StreamsCycle = request.app.state.cycle
            summary: CycleSummary = await run_in_threadpool(cycle.run_scheduled, stop_requested.is_set)
        except RedisUnavailableError as exc:
            metrics.observe_failure(CycleFailure.REDIS_UNAVAILABLE)
            raise _InvocationError(503, str(exc)) from exc
        except MonitorError as exc:
            metrics.observe_failure(CycleFailure.ERROR)
            raise _InvocationError(500, str(exc)) from exc
        except Exception as exc:
            metrics.observe_failure(CycleFailure.ERROR)
            log.exception("unexpected failure of the reclaim cycle")
            raise _InvocationError(500, f"unexpected failure of the reclaim cycle: {exc!r}") from exc
        finally:
            one_cycle_at_a_time.release()
        metrics.observe(summary, settings.STREAM_NAME)
        return summary

    return app


def _parse_or_400(body: bytes) -> TimerInfo:
    try:
        return parse_invocation(body)[1]
    except BadEnvelopeError as exc:
        raise _InvocationError(400, str(exc)) from None


def _require_json(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        shown = content_type or "none"
        raise _InvocationError(415, f"Content-Type must be application/json, not {shown!r}")


async def _read_body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_BYTES whether it has a Content-Length or comes chunked."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _InvocationError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _InvocationError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
