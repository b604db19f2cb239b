"""The Function App's own files, as the Functions host reads them: monitor/function.json (the timer's
schedule) and host.json (functionTimeout), found in the app root.

Used by `serve`, by `run` (the same schedule without the host) and by `check`; it imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handler.errors import SettingsError

# Where the app's files are: the Functions host sets FUNCTIONS_APP_ROOT_PATH; the deployed folder's launcher
# exports its own folder as TWEETS_MONITOR_APP_ROOT (deploy/build_artifact.py); else the working directory.
APP_ROOT_VARIABLES = ("FUNCTIONS_APP_ROOT_PATH", "TWEETS_MONITOR_APP_ROOT")
FUNCTION_JSON = Path("monitor") / "function.json"
HOST_JSON = Path("host.json")
# Without functionTimeout in host.json the plan's default applies; the smallest is the Consumption plan's.
DEFAULT_FUNCTION_TIMEOUT_SEC = 300
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")  # [d.]hh:mm:ss, as host.json writes it
_APP_SETTING = re.compile(r"%([^%]+)%")  # %NAME%: the host puts the app setting NAME there


def app_root(environ: Mapping[str, str] = os.environ) -> Path:
    for name in APP_ROOT_VARIABLES:
        if environ.get(name):
            return Path(environ[name])
    return Path.cwd()


def function_schedule(root: Path | None = None) -> str:
    """The timer's schedule from <app root>/monitor/function.json, the same file the host reads; there is no
    second copy of it here. SettingsError when the file is missing or has no timer."""
    path = (root or app_root()) / FUNCTION_JSON
    try:
        bindings = json.loads(path.read_text())["bindings"]
        return str(next(b["schedule"] for b in bindings if b.get("type") == "timerTrigger"))
    except FileNotFoundError:
        raise SettingsError(
            f"{path} does not exist: run from the app root (or set FUNCTIONS_APP_ROOT_PATH), or give "
            "--schedule"
        ) from None
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise SettingsError(f"{path} has no timerTrigger binding with a schedule ({exc!r})") from None


def resolve_app_settings(schedule: str, environ: Mapping[str, str] = os.environ) -> str:
    """`%NAME%` replaced by the app setting NAME, as the host resolves a timer's schedule."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise SettingsError(f"the schedule {schedule!r} names the app setting {name}, which is not set")
        return environ[name]

    return _APP_SETTING.sub(setting, schedule)


@dataclass(frozen=True)
class FunctionTimeout:
    seconds: float
    source: str  # where the number comes from, for messages


def function_timeout(root: Path | None = None) -> FunctionTimeout:
    """host.json's functionTimeout; the smallest plan default when it sets none or one that cannot be read.
    "-1" (no limit, on the plans that allow it) is infinity."""
    default = FunctionTimeout(DEFAULT_FUNCTION_TIMEOUT_SEC, "5 minutes, the Consumption plan's default")
    try:
        value = json.loads(((root or app_root()) / HOST_JSON).read_text()).get("functionTimeout")
    except (OSError, ValueError, AttributeError):
        return default
    if value is None:
        return FunctionTimeout(default.seconds, f"host.json sets no functionTimeout; {default.source}")
    if str(value).strip() == "-1":
        return FunctionTimeout(float("inf"), "host.json's functionTimeout -1")
    match = _TIMESPAN.fullmatch(str(value).strip())
    if not match:
        return FunctionTimeout(
            default.seconds, f"host.json's functionTimeout {value!r} cannot be read; {default.source}"
        )
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    total = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    return FunctionTimeout(total, f"host.json's functionTimeout {value}")


def budget_warning(budget_sec: float, timeout: FunctionTimeout) -> str:
    return (
        f"CYCLE_TIME_BUDGET_SEC={budget_sec:g} is longer than the function timeout ({timeout.seconds:g} s: "
        f"{timeout.source}): the host would cancel an invocation before its budget runs out; lower the "
        "budget or set functionTimeout in host.json"
    )
