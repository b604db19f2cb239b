"""The Functions host protocol: a thin FastAPI adapter around the reclaim cycle.

GET / is the host's readiness probe; POST /monitor (the function folder's name) runs one cycle and answers
in the host's shape. Errors are JSON with `error`, and also go to stderr, because the host throws away the
`Logs` of a non-2xx answer; for the same reason a failed invocation's captured lines go to stdout instead
(handler/logs.py). Each invocation ends with an export of the metrics, bounded: the host ends a worker only
by killing it, so nothing else would send what the invocation counted (handler/telemetry/__init__.py).
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

from handler.functions.envelope import BadEnvelopeError, TimerInfo, invocation_response, parse_invocation
from handler.logs import CapturedLogs, capture_logs
from handler.monitor import CycleFailed, Monitor
from handler.settings import MonitorSettings
from handler.telemetry import flush_after_invocation

log = logging.getLogger(__name__)

FUNCTION_NAME = "monitor"
MAX_BODY_BYTES = 1024 * 1024  # the host's envelope is well under 1 KB; a retry context adds a little
INVOCATION_ID_HEADER = "x-azure-functions-invocationid"
SUCCESS = range(200, 300)  # the host reads Logs only after EnsureSuccessStatusCode


class _InvocationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(settings: MonitorSettings, stop: threading.Event | None = None) -> FastAPI:
    """The handler's app; `stop` is set on SIGTERM/SIGINT so a running cycle ends after its page."""
    stop_requested = stop or threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor = Monitor.observed(settings)  # connects on the first invocation, not at start
        # Exports the metrics (not logs: the host sends those); starts on a thread, readiness never waits.
        monitor.start_telemetry(export_logs=False, wait=False)
        app.state.monitor = monitor
        try:
            yield
        finally:
            monitor.close()

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
    def prometheus_metrics(request: Request) -> Response:
        # A sync route: scraping reads gauges from Redis, off the event loop.
        monitor: Monitor = request.app.state.monitor
        assert monitor.metrics is not None  # noqa: S101  (Monitor.observed)
        return Response(generate_latest(monitor.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(f"/{FUNCTION_NAME}")
    async def invocation(request: Request) -> JSONResponse:
        monitor: Monitor = request.app.state.monitor
        with (
            capture_logs(request.headers.get(INVOCATION_ID_HEADER) or "-") as lines,
            monitor.telemetry.invocation(request.headers),  # the host's traceparent, if any, joins the cycle
        ):
            answered = False
            try:
                answer = await _invoke(request, monitor, lines, stop_requested)
                answered = answer.status_code in SUCCESS
                return answer
            finally:
                if not answered:  # the host drops a failure's Logs: its lines go to stdout instead
                    lines.release()

    return app


async def _invoke(
    request: Request, monitor: Monitor, lines: CapturedLogs, stop_requested: threading.Event
) -> JSONResponse:
    try:
        await _check_request(request)
    except _InvocationError as exc:
        return _failed(exc.status, exc.message)
    result = await run_in_threadpool(monitor.run_scheduled, stop_requested.is_set)
    # What this cycle counted is exported before the answer: after it, the host may kill the worker.
    await run_in_threadpool(flush_after_invocation, monitor.telemetry)
    if isinstance(result, CycleFailed):
        return _failed(503 if result.unavailable else 500, result.message)
    return JSONResponse(invocation_response(lines, result.as_dict()))


def _failed(status: int, message: str) -> JSONResponse:
    log.error("invocation failed (HTTP %d): %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


async def _check_request(request: Request) -> None:
    """The envelope the host sends (415, 413 or 400 otherwise); its content does not change the cycle."""
    _require_json(request.headers.get("content-type"))
    timer = _parse_or_400(await _read_body(request))
    if timer.IsPastDue:
        log.info("the timer is past due; running one cycle now")


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
