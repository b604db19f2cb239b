"""The command line: `serve` (what host.json starts), `reclaim` (one cycle) and `demo`.

Exit codes: 0 success, 1 the cycle failed, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

import uvicorn

from handler.app import create_app
from handler.connect import connect
from handler.cycle import ReclaimCycle
from handler.demo import run_demo
from handler.errors import MonitorError, SettingsError
from handler.logs import configure_logging
from handler.settings import MonitorSettings, load_settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_SETTINGS = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tweets-monitor",
        description="Reclaims tweets abandoned in a Redis stream consumer group.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the Azure Functions custom handler (what host.json starts)")
    commands.add_parser("reclaim", help="run one reclaim cycle and print its summary as JSON")
    demo = commands.add_parser("demo", help="show a reclaim cycle against a throwaway local Redis")
    demo.add_argument("--tweets", type=int, default=20, help="sample tweets to produce (default 20)")
    args = parser.parse_args(argv)

    if args.command == "demo":
        return run_demo(args.tweets)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tweets-monitor: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    configure_logging(settings.log_level, info_to_stdout=args.command == "serve")
    if settings.MIN_IDLE_TIME_SEC == 0:
        log.warning("MIN_IDLE_TIME_SEC is 0: entries are taken from live processors as well")
    if args.command == "serve":
        return serve(settings)
    return reclaim(settings)


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.warning("%s received: finishing the page in hand, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def reclaim(settings: MonitorSettings) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    client = connect(settings)
    try:
        summary = ReclaimCycle(client, settings).run(stop.is_set)
    except MonitorError as exc:
        log.error("reclaim cycle failed: %s", exc)
        return EXIT_FAILED
    finally:
        client.close()
    print(json.dumps(summary.as_dict()), flush=True)
    return EXIT_OK


class _HandlerServer(uvicorn.Server):
    """uvicorn, plus: a signal also tells a running cycle to stop after the page in hand."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event) -> None:
        super().__init__(config)
        self._stop = stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._stop.is_set():
            log.warning("%s received: finishing the page in hand, then exiting", signal.Signals(sig).name)
        self._stop.set()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after its graceful shutdown, which would end the process "killed by
        # SIGTERM"; a shutdown that finished its work exits 0 instead.
        self._captured_signals.clear()


def serve(settings: MonitorSettings) -> int:
    stop = threading.Event()
    config = uvicorn.Config(
        create_app(settings, stop),
        host="127.0.0.1",  # the host always dials 127.0.0.1; nothing else should reach the handler
        port=settings.FUNCTIONS_CUSTOMHANDLER_PORT,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    _HandlerServer(config, stop).run()
    return EXIT_OK
