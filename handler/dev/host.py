"""A stand-in for the Azure Functions host (which cannot be installed here), playing its side of the
custom-handler protocol as Azure Functions' custom-handler documentation describes it, for the tests, the
demo and the benchmarks:

- starts the handler with host.json's arguments in the app root, with FUNCTIONS_CUSTOMHANDLER_PORT and the
  app settings in its environment, and polls `GET /` every 25 ms for up to 30 s (any answer means ready);
- sends `POST /monitor` with the host's headers and the timer envelope, with a Content-Length or chunked;
- enforces what the host enforces on the answer: a 2xx must be `application/json` with a non-empty JSON
  object body (an empty or null body would hang the invocation until the function timeout), whose
  `Outputs`, `Logs` and `ReturnValue` have the right types; anything else fails the invocation.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handler.dev.local_redis import free_port
from handler.dev.samples import timer_envelope

envelope = timer_envelope  # the harness sends what the host sends

APP_ROOT = Path(__file__).resolve().parents[2]  # the checkout: host.json, monitor/function.json
STARTED: list[subprocess.Popen[bytes]] = []  # every handler the suite started, killed at its end if alive
READINESS_POLL_SEC = 0.025
INITIALIZATION_TIMEOUT_SEC = 30.0
HOST_VERSION = "4.1036.1.23224"
SUCCESS = range(200, 300)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    seconds: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class HostRejectedAnswerError(AssertionError):
    """The real host would have failed the invocation (or hung on it)."""


@dataclass
class FunctionsHost:
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="host-")))
    # The handler's stdout and stderr, in log_dir; one name for both keeps them in one file, as the host does.
    log_names: tuple[str, str] = ("stdout.log", "stderr.log")
    launch: list[str] | None = None  # how to start the handler, when not as host.json in APP_ROOT says
    started_in: float = 0.0  # seconds from process start to the first answer to GET /

    def command(self) -> list[str]:
        if self.launch is not None:
            return self.launch
        # host.json names the venv's python; the suite runs the handler with its own interpreter.
        description = json.loads((APP_ROOT / "host.json").read_text())["customHandler"]["description"]
        return [sys.executable, *description["arguments"]]

    def start(self) -> FunctionsHost:
        env = {
            **self.env,
            "FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port),
            "FUNCTIONS_CUSTOMHANDLER_WORKER_ID": str(uuid.uuid4()),
            "FUNCTIONS_APP_ROOT_PATH": str(APP_ROOT),
        }
        stdout = (self.log_dir / self.log_names[0]).open("ab")
        stderr = (self.log_dir / self.log_names[1]).open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=APP_ROOT, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL
        )
        STARTED.append(self.process)
        stdout.close()
        stderr.close()
        self.started_in = self.wait_until_ready()
        return self

    def wait_until_ready(self) -> float:
        process = self._process()
        started = time.monotonic()
        while time.monotonic() - started < INITIALIZATION_TIMEOUT_SEC:
            if process.poll() is not None:
                raise AssertionError(f"the handler exited at start: {self.stderr}")
            try:
                self.request("GET", "/", timeout=1)
                return time.monotonic() - started
            except OSError:
                time.sleep(READINESS_POLL_SEC)
        raise AssertionError("the handler did not answer GET / within the host's initialization timeout")

    @property
    def stdout(self) -> str:
        return (self.log_dir / self.log_names[0]).read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.log_dir / self.log_names[1]).read_text(errors="replace")

    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("the handler was not started")
        return self.process

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Answer:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            chunked = body is not None and not isinstance(body, bytes)
            connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        return Answer(response.status, response.getheader("Content-Type") or "", data,
                      time.monotonic() - started)  # fmt: skip

    def invoke(
        self,
        body: Any = None,
        *,
        invocation_id: str | None = None,
        chunked: bool = False,
        content_type: str | None = "application/json; charset=utf-8",
        raw: bytes | None = None,
        timeout: float = 60,
    ) -> Answer:
        """POST /monitor as the host does: its headers, the envelope, Content-Length or chunked."""
        payload = raw if raw is not None else json.dumps(envelope() if body is None else body).encode()
        headers = {
            "X-Azure-Functions-InvocationId": invocation_id or str(uuid.uuid4()),
            "X-Azure-Functions-HostVersion": HOST_VERSION,
            "User-Agent": f"Azure-Functions-Host/{HOST_VERSION}",
        }
        if content_type is not None:
            headers["Content-Type"] = content_type
        if chunked:
            pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)]
            return self.request("POST", "/monitor", iter(pieces), headers, timeout)
        return self.request("POST", "/monitor", payload, headers, timeout)

    def invoke_in_background(self) -> tuple[threading.Thread, list[Any]]:
        """Invoke from a thread; the answer (or a killed handler's broken connection) lands in the list."""
        answers: list[Any] = []

        def invoke() -> None:
            try:
                answers.append(self.invoke())
            except OSError as exc:  # the handler was killed mid-request: the host sees a dropped connection
                answers.append(exc)

        thread = threading.Thread(target=invoke, daemon=True)
        thread.start()
        return thread, answers

    def send_signal(self, sig: int) -> None:
        self._process().send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        process = self._process()
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout)


def completed(answer: Answer) -> dict[str, Any]:
    """What the host accepts as a completed invocation; returns ReturnValue, raises otherwise."""
    if answer.status not in SUCCESS:
        raise HostRejectedAnswerError(f"invocation failed: HTTP {answer.status}: {answer.body!r}")
    if answer.content_type.split(";")[0].strip() != "application/json":
        raise HostRejectedAnswerError(f"Invalid HttpResponseMessage: content type {answer.content_type!r}")
    if not answer.body.strip():
        raise HostRejectedAnswerError("an empty 2xx body never completes the invocation")
    document = answer.json
    if not isinstance(document, dict):
        raise HostRejectedAnswerError(f"the answer must be a JSON object, not {document!r}")
    if not isinstance(document.get("Outputs", {}), dict | None):
        raise HostRejectedAnswerError("Outputs must be an object or null")
    logs = document.get("Logs")
    if logs is not None and not (isinstance(logs, list) and all(isinstance(x, str) for x in logs)):
        raise HostRejectedAnswerError("Logs must be a list of strings or null")
    return_value: dict[str, Any] = document["ReturnValue"]
    return return_value


def failed(answer: Answer) -> str:
    """A non-2xx answer: the host marks the invocation failed; the handler's body must still say why."""
    if answer.status in SUCCESS:
        raise AssertionError(f"expected a failure, got {answer.status}")
    if answer.content_type.split(";")[0].strip() != "application/json":
        raise AssertionError(answer.content_type)
    message: str = answer.json["error"]
    if not message:
        raise AssertionError("a failure's answer must say why")
    return message
