"""A stand-in for the Azure Functions host (which cannot run here), playing its side of the custom-handler
protocol from the host's source, for the tests, the demo and the benchmarks. Every behaviour cites the file
and lines it follows, read at:

- HOST: Azure/azure-functions-host, commit 89dc438d476542786f2fc4070f553423213a6223 (October 2024, the
  newest snapshot readable here; not the 4.1037 release), under src/WebJobs.Script/ unless a path says
  otherwise;
- TIMERS: Azure/azure-webjobs-sdk-extensions, commit 2e7550f72362ee727b3e55703904212f0690c431, under
  src/WebJobs.Extensions/Extensions/Timers/.

What it plays:
- start: host.json's defaultExecutablePath (a relative one is taken from the app root when that file
  exists there, else left to the system's path: Workers/Http/HttpWorkerDescription.cs:45-57) with its
  arguments, in the app root, FUNCTIONS_CUSTOMHANDLER_PORT and the app settings in its environment
  (Workers/Http/HttpWorkerProcess.cs:48-65); `GET /` every 25 ms until any
  answer, for at most 30 s, else an error (Workers/Http/DefaultHttpWorkerService.cs:263-289,
  Workers/Http/HttpWorkerChannel.cs:51-83). The port is chosen once per host
  (Workers/Http/Configuration/HttpWorkerOptionsSetup.cs:112): a restarted worker gets the same one;
- the invocation: `POST /monitor` with the host's headers and the timer envelope; a 2xx must be JSON the host
  can read, else the invocation fails (DefaultHttpWorkerService.cs:179-238);
- logs: each stdout line is one Information record, each stderr line one Warning record when it contains
  "warn", else one Error record, none tied to an invocation (Workers/ProcessManagement/WorkerProcess.cs
  112-154 and 198-233, with Workers/Http/HttpWorkerDescription.cs:20); each `Logs` entry is one
  Information record of the invocation, and only for a 2xx answer (DefaultHttpWorkerService.cs:193-209 and
  240-261);
- a worker's exit: 0 closes it for good, 200 restarts it, anything else is an error that restarts it until
  the third error within 30 minutes shuts the host down (WorkerProcess.cs:156-196,
  Workers/Http/HttpWorkerProcess.cs:67-82, Workers/Http/HttpFunctionInvocationDispatcher.cs:106-173,
  Workers/WorkerConstants.cs:59-63). A worker the host killed itself is no error (WorkerProcess.cs:160-164);
- a function timeout: the invocation fails, and unless it completes within the grace period the worker is
  killed and started again, which counts no error (src/WebJobs.Script.WebHost/WebScriptHostExceptionHandler.cs
  28-65, HttpFunctionInvocationDispatcher.cs:131-143 and 209-214);
- the host stopping (a restart, a deploy, a settings change, scale-in): the timer listener waits for the
  running scheduled invocation (TIMERS Listener/TimerListener.cs:155-174), then the worker is killed with
  Process.Kill(), SIGKILL, and waited for 1 s (WorkerProcess.cs:254-283). The host never sends SIGTERM;
- a run through the admin endpoint: the same envelope as a scheduled run, with a fresh TimerInfo (TIMERS
  Bindings/TimerTriggerBinding.cs:58-75), outside the timer listener's lock, so the host's stop does not
  wait for it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handler.dev.local_redis import free_port
from handler.dev.samples import timer_envelope
from handler.functions.host_files import function_timeout

envelope = timer_envelope  # the harness sends what the host sends

APP_ROOT = Path(__file__).resolve().parents[2]  # the checkout: host.json, monitor/function.json
STARTED: list[subprocess.Popen[bytes]] = []  # every handler the suite started, killed at its end if alive
READINESS_POLL_SEC = 0.025  # Workers/WorkerConstants.cs:11
INITIALIZATION_TIMEOUT_SEC = 30.0  # HttpWorkerOptions.InitializationTimeout's default
HOST_VERSION = "4.1036.1.23224"
SUCCESS = range(200, 300)
# Workers/WorkerConstants.cs:62-63: what a worker's exit code asks of the host.
SUCCESS_EXIT_CODE, INTENTIONAL_RESTART_EXIT_CODE = 0, 200
# Workers/Http/HttpFunctionInvocationDispatcher.cs:55 and Workers/WorkerConstants.cs:59.
ERRORS_BEFORE_SHUTDOWN = 3
ERROR_WINDOW_SEC = 30 * 60
KILL_WAIT_SEC = 1.0  # Workers/ProcessManagement/WorkerProcess.cs:29 and 270
# What OnTimeoutExceptionAsync waits for the timed-out invocation before the kill: the WebJobs SDK's
# TimeoutAttribute.GracePeriod, 2 s (src/Microsoft.Azure.WebJobs/TimeoutAttribute.cs in newer host trees).
TIMEOUT_GRACE_SEC = 2.0
STDERR_LINES_KEPT = 3  # WorkerProcess.cs:37 and 150-154: the last error lines, quoted at an exit


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


class FunctionTimedOutError(HostRejectedAnswerError):
    """The invocation ran past functionTimeout: the host failed it (and killed the worker unless it answered
    within the grace period)."""


@dataclass(frozen=True)
class Record:
    """One log record as the host hands it to Application Insights: its level, its text, the invocation it
    belongs to (None for console lines, which the host ties to no invocation) and the way it came."""

    level: str  # "Information", "Warning" or "Error"
    message: str
    invocation_id: str | None
    via: str  # "stdout", "stderr" or "Logs"


def console_level(line: str, stream: str) -> str:
    """WorkerProcess.cs:120-154 and 198-204, with UseStdErrorStreamForErrorsOnly true for a custom handler
    (Workers/Http/HttpWorkerDescription.cs:20)."""
    if stream == "stdout":
        return "Information"
    return "Warning" if "warn" in line.lower() else "Error"


@dataclass
class FunctionsHost:
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="host-")))
    # The handler's stdout and stderr, in log_dir; one name for both keeps them in one file, as the host does.
    log_names: tuple[str, str] = ("stdout.log", "stderr.log")
    app_root: Path = APP_ROOT  # the folder the host runs: host.json, monitor/function.json
    launch: list[str] | None = None  # how to start the handler, when not as the app root's host.json says
    started_in: float = 0.0  # seconds from process start to the first answer to GET /
    initialization_timeout_sec: float = INITIALIZATION_TIMEOUT_SEC
    # host.json's functionTimeout, or the plan's default (handler/functions/host_files.py).
    function_timeout_sec: float = field(default_factory=lambda: function_timeout(APP_ROOT).seconds)
    clock: Callable[[], float] = time.monotonic  # when each worker error happened (the 30-minute window)
    # What the host saw and did: the exit codes of workers it did not kill itself, the errors it counted (as
    # it words them), what else it logged, how many workers it started.
    exits: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    workers_started: int = 0
    running: bool = True  # False once the host stopped, or shut itself down
    closed: bool = False  # the worker exited 0: never started again
    _error_times: list[float] = field(default_factory=list)
    _killed: set[int] = field(default_factory=set)  # pids of the workers the host disposed of
    _stderr_offset: int = 0  # where the current worker's stderr starts in the log file
    _logs: list[Record] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _scheduled: int = 0  # scheduled invocations under way: what the timer listener's lock covers
    _idle: threading.Condition = field(default_factory=threading.Condition)
    _timed_out: set[str] = field(default_factory=set)

    def command(self) -> list[str]:
        if self.launch is not None:
            return self.launch
        description = json.loads((self.app_root / "host.json").read_text())["customHandler"]["description"]
        executable = description["defaultExecutablePath"]
        if not Path(executable).is_absolute() and (self.app_root / executable).is_file():
            executable = str(self.app_root / executable)
        return [executable, *description["arguments"]]

    def start(self) -> FunctionsHost:
        """The host starts and its worker answers the readiness probe (AssertionError otherwise; the host
        then goes on as it does: an error, a restart, at the third error its own shutdown)."""
        self._spawn()
        self.started_in = self.wait_until_ready()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        """HttpWorkerProcess.cs:48-65 and WorkerProcess.cs:72-110: the handler started, its exit watched."""
        env = {
            **self.env,
            "FUNCTIONS_CUSTOMHANDLER_PORT": str(self.port),
            "FUNCTIONS_CUSTOMHANDLER_WORKER_ID": str(uuid.uuid4()),
            "FUNCTIONS_APP_ROOT_PATH": str(self.app_root),
        }
        stdout = (self.log_dir / self.log_names[0]).open("ab")
        stderr = (self.log_dir / self.log_names[1]).open("ab")
        with self._lock:
            self._stderr_offset = stderr.tell()
            process = subprocess.Popen(
                self.command(),
                cwd=self.app_root,
                env=env,
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
            self.process = process
            self.workers_started += 1
        STARTED.append(process)
        stdout.close()
        stderr.close()
        threading.Thread(target=self._watch, args=(process,), name="worker-exit", daemon=True).start()
        return process

    def _watch(self, process: subprocess.Popen[bytes]) -> None:
        """WorkerProcess.OnProcessExited (WorkerProcess.cs:156-196)."""
        code = process.wait()
        with self._lock:
            if process.pid in self._killed or not self.running:  # WorkerProcess.cs:160-164: disposing
                return
            if code == SUCCESS_EXIT_CODE:  # WorkerProcess.cs:168-172: closed; no event, so no restart
                self.closed = True
            elif (
                code == INTENTIONAL_RESTART_EXIT_CODE
            ):  # WorkerProcess.cs:173-176, HttpWorkerProcess.cs:78-82
                self.events.append("Language Worker Process exited and needs to be restarted.")
                self._restart_worker(counted=False)  # HttpFunctionInvocationDispatcher.cs:116-123
            else:  # WorkerProcess.cs:177-185, HttpWorkerProcess.cs:67-76: the code and stderr's last errors
                tail = ",".join(self._stderr_errors()[-STDERR_LINES_KEPT:])
                self._error(f"{self.command()[0]} exited with code {code} (0x{code & 0xFFFFFFFF:X}): {tail}")
            self.exits.append(code)  # once the host has acted on it (a restarted worker is already spawned)

    def _stderr_errors(self) -> list[str]:
        """The current worker's stderr lines the host logged as errors (WorkerProcess.cs:120-154)."""
        with (self.log_dir / self.log_names[1]).open("rb") as stderr:
            stderr.seek(self._stderr_offset)
            lines = stderr.read().decode(errors="replace").splitlines()
        return [line for line in lines if line and console_level(line, "stderr") == "Error"]

    def _error(self, message: str) -> None:
        """HttpFunctionInvocationDispatcher.WorkerError (106-114): the error goes into the bucket, which an
        error more than 30 minutes after the previous one empties first (159-173); then the worker is
        disposed of and started again, or, at the third error, the host shuts down (131-157)."""
        with self._lock:
            now = self.clock()
            if self._error_times and now - self._error_times[-1] > ERROR_WINDOW_SEC:
                self._error_times.clear()
            self._error_times.append(now)
            self.errors.append(message)
            self._restart_worker(counted=True)

    def _restart_worker(self, counted: bool) -> None:
        """DisposeAndRestartWorkerChannel and RestartWorkerChannel (HttpFunctionInvocationDispatcher.cs
        131-157)."""
        self._dispose()
        if counted and len(self._error_times) >= ERRORS_BEFORE_SHUTDOWN:
            self.events.append("Exceeded http worker restart retry count. Shutting down Functions Host")
            self.running = False
            return
        # InitializeHttpWorkerChannelAsync (HttpFunctionInvocationDispatcher.cs:72-78): start, then wait for
        # readiness, where a worker that never answers is an error (HttpWorkerChannel.cs:51-83).
        self._spawn()
        threading.Thread(target=self._until_ready, name="worker-restart", daemon=True).start()

    def _until_ready(self) -> None:
        with contextlib.suppress(AssertionError):  # its exit or its readiness timeout is dealt with there
            self.wait_until_ready()

    def _dispose(self) -> None:
        """WorkerProcess.Dispose (WorkerProcess.cs:254-283): Process.Kill(), that is SIGKILL, then up to 1 s
        for the exit; whatever its code, it is no error (160-164)."""
        with self._lock:
            process = self.process
            if process is None:
                return
            self._killed.add(process.pid)
        if process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=KILL_WAIT_SEC)
            except subprocess.TimeoutExpired:
                self.events.append(f"Worker process {process.pid} has not exited despite waiting for 1000 ms")

    def wait_until_ready(self) -> float:
        """DefaultHttpWorkerService.IsWorkerReady (263-289): any HTTP answer to `GET /` means ready; past the
        initialization timeout the host counts an error (HttpWorkerChannel.cs:58-73)."""
        process = self._process()
        started = time.monotonic()
        while time.monotonic() - started < self.initialization_timeout_sec:
            if process.poll() is not None:
                raise AssertionError(f"the handler exited at start: {self.stderr}")
            try:
                self.request("GET", "/", timeout=1)
                return time.monotonic() - started
            except (OSError, http.client.HTTPException):
                time.sleep(READINESS_POLL_SEC)
        with self._lock:
            if self.process is process and self.running:
                self._error("Initializing HttpWorker timed out.")
        raise AssertionError("the handler did not answer GET / within the host's initialization timeout")

    def wait_until(self, condition: Callable[[], object], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def records(self) -> list[Record]:
        """Every log record the host made of the handler's output: its console lines (WorkerProcess.cs
        112-154 and 198-204; a null line ends the stream, an empty one is still a line) and the `Logs` of
        its 2xx answers (DefaultHttpWorkerService.cs:240-261)."""
        console = [
            Record(console_level(line, via), line, None, via)
            for via, text in (("stdout", self.stdout), ("stderr", self.stderr))
            for line in text.splitlines()
        ]
        return console + list(self._logs)

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
        return Answer(
            response.status, response.getheader("Content-Type") or "", data, time.monotonic() - started
        )

    def invoke(
        self,
        body: Any = None,
        *,
        invocation_id: str | None = None,
        chunked: bool = False,
        content_type: str | None = "application/json; charset=utf-8",
        raw: bytes | None = None,
        timeout: float = 60,
        admin: bool = False,
    ) -> Answer:
        """POST /monitor as the host does: its headers, the envelope, Content-Length or chunked. A scheduled
        run holds the timer listener's lock, which the host's stop waits for (TimerListener.cs:155-174 and
        274-351); a run through the admin endpoint (`admin=True`) sends the same envelope, since
        TimerTriggerBinding.BindAsync builds a fresh TimerInfo (58-75), and nothing waits for it. Past the
        function timeout the invocation fails (FunctionTimedOutError) and the worker is killed and
        restarted."""
        if not self.running:
            raise HostRejectedAnswerError("the host is not running")
        invocation = invocation_id or str(uuid.uuid4())
        payload = raw if raw is not None else json.dumps(envelope() if body is None else body).encode()
        headers = {
            "X-Azure-Functions-InvocationId": invocation,
            "X-Azure-Functions-HostVersion": HOST_VERSION,
            "User-Agent": f"Azure-Functions-Host/{HOST_VERSION}",
        }
        if content_type is not None:
            headers["Content-Type"] = content_type
        sent: bytes | Iterator[bytes] = payload
        if chunked:
            sent = iter([payload[i : i + 7] for i in range(0, len(payload), 7)])
        done = threading.Event()
        watchdog = threading.Timer(
            self.function_timeout_sec, self._function_timed_out, args=(invocation, self.process, done)
        )
        watchdog.daemon = True
        if not admin:
            with self._idle:
                self._scheduled += 1
        watchdog.start()
        try:
            answer = self.request("POST", "/monitor", sent, headers, timeout)
        except OSError as exc:
            if invocation in self._timed_out:
                raise FunctionTimedOutError(
                    f"invocation {invocation} timed out; the worker was killed"
                ) from exc
            raise
        finally:
            done.set()
            watchdog.cancel()
            if not admin:
                with self._idle:
                    self._scheduled -= 1
                    self._idle.notify_all()
        if invocation in self._timed_out:
            raise FunctionTimedOutError(f"invocation {invocation} answered after the function timeout")
        self._keep_logs(invocation, answer)
        return answer

    def _keep_logs(self, invocation: str, answer: Answer) -> None:
        """EnsureSuccessStatusCode first (DefaultHttpWorkerService.cs:193-194), then each `Logs` entry at
        Information in the invocation's logger (240-261)."""
        if answer.status not in SUCCESS:
            return
        try:
            logs = answer.json.get("Logs") or []
        except (ValueError, AttributeError):
            return
        self._logs.extend(Record("Information", str(line), invocation, "Logs") for line in logs)

    def _function_timed_out(
        self, invocation: str, process: subprocess.Popen[bytes] | None, done: threading.Event
    ) -> None:
        """WebScriptHostExceptionHandler.OnTimeoutExceptionAsync (28-65): the invocation has failed; if it
        does not complete within the grace period, the worker is killed and started again
        (RestartWorkerWithInvocationIdAsync, HttpFunctionInvocationDispatcher.cs:209-214): no error."""
        self._timed_out.add(invocation)
        self.events.append(
            f"Timeout value of {self.function_timeout_sec:g} s was exceeded by function: Functions.monitor "
            f"(Id: '{invocation}')"
        )
        if done.wait(TIMEOUT_GRACE_SEC):
            return
        self.events.append(
            "A function timeout has occurred. Restarting worker process executing invocationId "
            f"'{invocation}'."
        )
        with self._lock:
            if self.process is process and self.running:
                self._restart_worker(counted=False)

    def invoke_in_background(self, admin: bool = False) -> tuple[threading.Thread, list[Any]]:
        """Invoke from a thread; the answer (or a killed handler's broken connection or cut answer) lands
        in the list."""
        answers: list[Any] = []

        def invoke() -> None:
            try:
                answers.append(self.invoke(admin=admin))
            except (OSError, http.client.HTTPException) as exc:
                # The handler was killed mid-request (a dropped connection) or mid-answer (a cut answer).
                answers.append(exc)
            except HostRejectedAnswerError as exc:
                answers.append(exc)

        thread = threading.Thread(target=invoke, daemon=True)
        thread.start()
        return thread, answers

    def send_signal(self, sig: int) -> None:
        """A signal from outside the host (an operator's `kill`): the host then acts on the exit code."""
        self._process().send_signal(sig)

    def stop(self, sig: int | None = None, timeout: float = 30) -> int:
        """The host stops, as at a restart, a deploy, a settings change or scale-in: the timer listener
        waits for the running scheduled invocation (TimerListener.cs:155-174), then the worker is killed
        (WorkerProcess.cs:254-283). Returns the worker's exit code (-9: SIGKILL).

        With `sig`: the host stops while the handler gets that signal itself, as with Ctrl-C under
        `func start`, which reaches every process of the terminal; the handler's own exit code is
        returned, and nothing restarts it."""
        with self._lock:
            self.running = False
        process = self._process()
        if sig is not None:
            if process.poll() is None:
                process.send_signal(sig)
            return process.wait(timeout=timeout)
        with self._idle:
            self._idle.wait_for(
                lambda: self._scheduled == 0, timeout=self.function_timeout_sec + TIMEOUT_GRACE_SEC
            )
        self._dispose()
        return process.wait(timeout=timeout)

    def restart(self) -> FunctionsHost:
        """The whole host restarts (a deploy, a settings change, a restart from the portal): it stops as
        `stop` does and starts afresh, with a new port (HttpWorkerOptionsSetup.cs:112) and no errors
        counted."""
        self.stop()
        with self._lock:
            self.running, self.closed = True, False
            self._error_times.clear()
            self.port = free_port()
        return self.start()


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
