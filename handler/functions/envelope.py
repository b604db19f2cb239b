"""The Functions host's invocation request and the answer it expects, as Azure Functions' custom-handler
documentation describes them (the request's Data and Metadata; the answer's Outputs, Logs, ReturnValue)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

TIMER_BINDING = "req"  # the binding's name in monitor/function.json


class BadEnvelopeError(ValueError):
    """The request body is not an invocation envelope this handler can use."""


class TimerScheduleStatus(BaseModel):
    # Timestamps come in several formats (with and without offset); they are informational only, so
    # they are kept as sent instead of being parsed.
    model_config = ConfigDict(extra="allow")
    Last: Any = None
    Next: Any = None
    LastUpdated: Any = None


class TimerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    Schedule: dict[str, Any] | None = None
    ScheduleStatus: TimerScheduleStatus | None = None
    IsPastDue: bool = False


class InvocationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    Data: dict[str, Any]
    Metadata: dict[str, Any] | None = None

    def timer(self) -> TimerInfo:
        if TIMER_BINDING not in self.Data:
            raise BadEnvelopeError(f"Data.{TIMER_BINDING} (the timer binding) is missing")
        try:
            return TimerInfo.model_validate(self.Data[TIMER_BINDING])
        except ValidationError as exc:
            raise BadEnvelopeError(f"Data.{TIMER_BINDING} is not a timer object: {_first(exc)}") from None


def parse_invocation(body: bytes) -> tuple[InvocationRequest, TimerInfo]:
    """Parse and check the envelope; every problem becomes a BadEnvelopeError saying what is wrong."""
    if not body.strip():
        raise BadEnvelopeError("the request body is empty; expected the host's JSON envelope")
    try:
        document = json.loads(body)
    except UnicodeDecodeError:
        raise BadEnvelopeError("the request body is not valid UTF-8") from None
    except RecursionError:
        raise BadEnvelopeError("the request body is nested too deeply") from None
    except ValueError as exc:
        raise BadEnvelopeError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadEnvelopeError("the request body must be a JSON object with Data and Metadata")
    try:
        request = InvocationRequest.model_validate(document)
    except ValidationError as exc:
        raise BadEnvelopeError(f"not an invocation envelope: {_first(exc)}") from None
    except RecursionError:
        raise BadEnvelopeError("the request body is nested too deeply") from None
    return request, request.timer()


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


def invocation_response(logs: list[str], return_value: dict[str, Any]) -> dict[str, Any]:
    """The custom-handler answer; never empty or null, or the host waits until its function timeout."""
    return {"Outputs": {}, "Logs": logs, "ReturnValue": return_value}
