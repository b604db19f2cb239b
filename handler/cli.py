"""The command line (`python -m handler` or `tweets-monitor`).

serve (what host.json starts), reclaim [--dry-run], run [--once], status, check, dead-letter
list|show|replay|purge, consumers prune, demo. Exit codes: 0 success, 1 failure, 2 bad settings or usage;
serve never exits 0, which the Functions host reads as "never start me again": 200 after a signal (see
EXIT_RESTART).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from handler.errors import MonitorError, SettingsError
from handler.keys import StreamKeys
from handler.logs import configure_logging
from handler.monitor import CycleFailed, Monitor, failure_of
from handler.reclaim.summary import CycleSummary
from handler.settings import MonitorSettings, host_port, load_settings, split_host_port
from handler.transport.client import Client
from handler.transport.connect import RedisConnection, connect
from handler.transport.failures import REDIS_FAILURES

# Each command imports what only it needs (FastAPI and uvicorn, rich, prometheus, croniter) when it runs:
# `reclaim` stays lean in memory and start-up time.

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_SETTINGS = 0, 1, 2
PAST_TENSE = {"replay": "replayed", "purge": "purged"}
PRUNING = ("XINFO CONSUMERS", "XGROUP DELCONSUMER")  # what reclaim/consumers.py's script sends


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tweets-monitor", description="Reclaims tweets abandoned in a Redis stream consumer group."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the Azure Functions custom handler (what host.json starts)")
    reclaim = commands.add_parser("reclaim", help="run one reclaim cycle and print its summary as JSON")
    reclaim.add_argument("--dry-run", action="store_true", help="say what a cycle would do, change nothing")
    run = commands.add_parser("run", help="run cycles on monitor/function.json's schedule, without the host")
    run.add_argument("--once", action="store_true", help="one cycle now, then exit (for cron)")
    run.add_argument("--schedule", help="an NCRONTAB schedule instead of function.json's (seconds first)")
    status = commands.add_parser("status", help="the group at a glance: pending per consumer, dead letters")
    status.add_argument("--json", action="store_true")
    check = commands.add_parser(
        "check", help="settings, connectivity, authentication, version, stream, permissions"
    )
    check.add_argument(
        "--user", help="verify this ACL user's rights (ACL DRYRUN, Redis 7.0+), signed in as an administrator"
    )
    check.add_argument("--json", action="store_true", help="the checks as one JSON array")

    dead = commands.add_parser("dead-letter", help="list, show, replay or purge dead letters")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the oldest (or newest) dead letters")
    listing.add_argument("--count", type=positive_int, default=20)
    listing.add_argument("--newest", action="store_true")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one dead letter, every field")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    for name, what in (("replay", "put back into the main stream"), ("purge", "delete for good")):
        action = actions.add_parser(name, help=f"dead letters to {what}")
        action.add_argument("ids", nargs="*")
        action.add_argument("--all", action="store_true")
        action.add_argument("--dry-run", action="store_true")
        if name == "purge":
            action.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        else:
            action.add_argument("--count", type=positive_int, help="the N oldest dead letters")
            action.add_argument(
                "--rate",
                type=seconds,
                default=0.0,
                help="at most this many entries per second (default: unpaced; live processors read them)",
            )

    consumers = commands.add_parser("consumers", help="remove consumers idle with nothing pending")
    consumer_actions = consumers.add_subparsers(dest="action", required=True)
    prune = consumer_actions.add_parser(
        "prune", help="remove consumers idle longer than --idle-sec, if empty"
    )
    prune.add_argument("--idle-sec", type=seconds, required=True)
    prune.add_argument("--dry-run", action="store_true")
    prune.add_argument("--json", action="store_true")

    demo = commands.add_parser("demo", help="show a reclaim cycle against a throwaway local Redis")
    demo.add_argument("--tweets", type=int, default=20, help="sample tweets to produce (default 20)")
    return parser


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (anything else exits 2 with a message)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more (NaN and infinities exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of seconds, 0 or more")
    return value


Command = Callable[[argparse.Namespace], int]  # a subcommand: its parsed arguments in, the exit code out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def with_settings(
    command: Callable[[argparse.Namespace, MonitorSettings], int],
) -> Command:
    """A command that needs the settings: they are loaded (bad ones exit 2), logging is set up from them,
    and what the command meets is said in one line: bad settings exit 2, a failure exits 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"tweets-monitor: {exc}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        configure_logging(
            settings.log_level,
            info_to_stdout=args.command == "serve",
            json_lines=settings.LOG_FORMAT == "json",
        )
        if settings.MIN_IDLE_TIME_SEC == 0:
            log.warning("MIN_IDLE_TIME_SEC is 0: entries are taken from live processors as well")
        try:
            return command(args, settings)
        except SettingsError as exc:
            log.error("%s: %s", args.command, exc)
            return EXIT_BAD_SETTINGS
        except (MonitorError, *REDIS_FAILURES) as exc:
            log.error("%s failed: %s", args.command, failure_of(exc, settings).message)
            return EXIT_FAILED

    return run


@contextmanager
def connected(settings: MonitorSettings) -> Iterator[Client]:
    """A client for one command, closed when it ends."""
    client = connect(settings)
    try:
        yield client
    finally:
        client.close()


def demo(args: argparse.Namespace) -> int:
    """The walkthrough behind ./scripts/demo (no settings: it starts its own Redis); handler/dev is left out
    of the deployed app."""
    try:
        from handler.dev.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name not in ("handler.dev", "handler.dev.demo"):
            raise
        print(
            "tweets-monitor: the demo is not part of the deployed app (it starts a throwaway Redis); run "
            "./scripts/demo from a checkout of the repository",
            file=sys.stderr,
        )
        return EXIT_BAD_SETTINGS
    return run_demo(args.tweets)


def _request_stop(stop: threading.Event, signum: int) -> None:
    if not stop.is_set():
        log.warning("%s received: finishing the page in hand, then exiting", signal.Signals(signum).name)
    stop.set()


def _stop_on_signals(stop: threading.Event) -> None:
    def request_stop(signum: int, frame: FrameType | None) -> None:
        _request_stop(stop, signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def reclaim(args: argparse.Namespace, settings: MonitorSettings) -> int:
    with connected(settings) as client:
        if args.dry_run:
            from handler.ops import console
            from handler.ops.dry_run import dry_run

            report = dry_run(client, settings)
            if sys.stdout.isatty():
                console.dry_run_report(report)
            else:
                print(json.dumps(report.as_dict()))
            return EXIT_OK
        stop = threading.Event()
        _stop_on_signals(stop)
        result = Monitor(settings, RedisConnection(settings, client)).run_once(stop.is_set)
    if isinstance(result, CycleFailed):
        log.error("reclaim failed: %s", result.message)
        return EXIT_FAILED
    print(json.dumps(result.as_dict()), flush=True)
    return EXIT_OK


def run(args: argparse.Namespace, settings: MonitorSettings) -> int:
    """A scheduler: it connects when a cycle needs Redis, and keeps going whatever a cycle meets (each
    failure is logged and counted, the next cycle tries again); only bad settings end it (exit 2)."""
    from prometheus_client import start_http_server

    from handler.functions.host_files import function_schedule, resolve_app_settings
    from handler.runner import checked_schedule, run_on_schedule, schedule_zone

    schedule = None
    if not args.once:  # SettingsError: exit 2
        written = args.schedule or function_schedule()
        schedule = checked_schedule(resolve_app_settings(written), written)
    stop = threading.Event()
    _stop_on_signals(stop)
    monitor = Monitor.observed(settings)
    assert monitor.metrics is not None  # noqa: S101  (Monitor.observed)
    if schedule is not None:  # a cron job's one cycle ends before any scrape could come
        host, port = split_host_port(settings.METRICS_ADDRESS)
        start_http_server(port, addr=host, registry=monitor.metrics.registry)
        log.info("metrics on http://%s/metrics", host_port(host, port))
    # The same metrics, and the log records (no host here to send them), when the environment asks for it.
    monitor.start_telemetry(export_logs=True, wait=True)

    def one_cycle() -> CycleSummary | None:
        result = monitor.run_scheduled(stop.is_set)
        if isinstance(result, CycleFailed):
            log.error("reclaim cycle failed: %s", result.message)
            return None
        return result

    try:
        if schedule is None:
            return EXIT_OK if one_cycle() is not None else EXIT_FAILED
        log.info("running on schedule %r (%s)", schedule, settings.WEBSITE_TIME_ZONE or "UTC")
        run_on_schedule(schedule, schedule_zone(settings.WEBSITE_TIME_ZONE), one_cycle, stop)
        return EXIT_OK
    finally:
        monitor.close()  # telemetry flushes for at most 2 s


def status(args: argparse.Namespace, settings: MonitorSettings) -> int:
    from handler.ops import console
    from handler.ops.status import gather_status

    keys = StreamKeys.from_settings(settings)
    with connected(settings) as client, console.progress("reading the group", None):
        result = gather_status(
            client,
            keys,
            settings.DEAD_LETTER_MAXLEN,
            settings.DEAD_LETTER_WARN_AT,
            settings.SWEEP_STALE_AFTER_SEC,
        )
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        console.status_table(result)
    return EXIT_OK


def check(args: argparse.Namespace, settings: MonitorSettings) -> int:
    """Connects by itself: failing to connect is one of the checks it reports."""
    from handler.ops.check import run_checks

    passed, results = True, []
    for result in run_checks(settings, args.user):
        if args.json:
            results.append(result.as_dict())
        else:
            print(result.line(), flush=True)
        passed = passed and not result.failed
    if args.json:
        print(json.dumps(results))
    return EXIT_OK if passed else EXIT_FAILED


def dead_letter(args: argparse.Namespace, settings: MonitorSettings) -> int:
    with connected(settings) as client:
        return _dead_letter(client, settings, args)


def _dead_letter(client: Client, settings: MonitorSettings, args: argparse.Namespace) -> int:
    from handler.ops import console, dead_letter_tools

    keys = StreamKeys.from_settings(settings)
    if args.action == "list":
        entries = dead_letter_tools.list_dead_letters(client, keys, args.count, args.newest)
        if args.json:
            print(json.dumps([entry.row() for entry in entries]))
        else:
            console.dead_letter_table(entries, sys.stdout.isatty())
        return EXIT_OK
    if args.action == "show":
        entry = dead_letter_tools.show_dead_letter(client, keys, args.id)
        if entry is None:
            log.error("no dead letter %s in %s", args.id, keys.dead_letter)
            return EXIT_FAILED
        if args.json:
            fields = [v.decode(errors="replace") for v in entry.original]
            print(json.dumps({**entry.row(), "original": dict(zip(fields[::2], fields[1::2], strict=True))}))
        else:
            console.dead_letter_detail(entry)
        return EXIT_OK
    return _replay_or_purge(client, keys, args)


def _replay_or_purge(client: Client, keys: StreamKeys, args: argparse.Namespace) -> int:
    from handler.ops import console, dead_letter_tools

    limit = getattr(args, "count", None)
    if bool(args.ids) == bool(args.all or limit):
        log.error(
            "name the dead letters to %s, or give --all%s", args.action, " or --count" * (limit is None)
        )
        return EXIT_BAD_SETTINGS
    # Named IDs are taken as given; --all and --count are read from Redis a batch at a time as they are
    # applied, so memory stays flat however many dead letters there are.
    total = len(args.ids) if args.ids else dead_letter_tools.count_dead_letters(client, keys)
    total = min(total, limit) if limit else total
    if args.dry_run:
        print(f"would {args.action} {total:,} dead letters from {keys.dead_letter}")
        return EXIT_OK
    if args.action == "purge" and not args.yes and not _confirm(f"delete {total:,} dead letters for good?"):
        print("nothing purged")
        return EXIT_FAILED
    with console.progress(f"{args.action}ing dead letters", total) as bar:

        def advance(moved: int) -> None:
            bar.advance(bar.task_ids[0], moved)

        if args.action == "replay":
            ids = args.ids or dead_letter_tools.oldest_ids(client, keys, limit)
            done = dead_letter_tools.replay(client, keys, ids, advance, rate=args.rate)
        elif args.all:
            done = dead_letter_tools.purge_all(client, keys, advance)
        else:
            done = dead_letter_tools.purge(client, keys, args.ids)
    print(f"{PAST_TENSE[args.action]} {done:,} of {total:,} dead letters")
    return EXIT_OK


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        log.error("refusing to purge without --yes when nobody can answer the question")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def consumers(args: argparse.Namespace, settings: MonitorSettings) -> int:
    from handler.ops.rights import needs
    from handler.reclaim.consumers import prune_idle_consumers

    keys = StreamKeys.from_settings(settings)
    with connected(settings) as client, needs("EVAL", key=keys.stream, inside=PRUNING):
        removed = prune_idle_consumers(
            client, keys.stream, keys.group, args.idle_sec, [keys.consumer], args.dry_run
        )
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "idle_sec": args.idle_sec, "consumers": removed}))
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} consumers idle for {args.idle_sec:g} s with nothing pending")
    from handler.keys import visible

    for name in removed:
        print(f"  {visible(name)}")
    return EXIT_OK


def serve(args: argparse.Namespace, settings: MonitorSettings) -> int:
    import uvicorn

    from handler.functions.app import create_app

    class HandlerServer(uvicorn.Server):
        """uvicorn, plus: a signal also tells a running cycle to stop after the page in hand."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            _request_stop(stop, sig)
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, which would end the process "killed
            # by SIGTERM"; a shutdown that finished its work exits EXIT_RESTART instead (see serve_command).
            self._captured_signals.clear()

    from handler.functions.host_files import budget_warning, function_timeout

    timeout = function_timeout()
    if timeout.seconds < settings.CYCLE_TIME_BUDGET_SEC:
        log.warning(budget_warning(settings.CYCLE_TIME_BUDGET_SEC, timeout))
    stop = threading.Event()
    config = uvicorn.Config(
        create_app(settings, stop),
        host="127.0.0.1",  # the host always dials 127.0.0.1; nothing else should reach the handler
        port=settings.FUNCTIONS_CUSTOMHANDLER_PORT,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    HandlerServer(config).run()
    # uvicorn returns only after a signal, or when it could not start (it exits by itself when it cannot
    # listen): anything but a signal is an error the host restarts it from, and counts.
    return EXIT_RESTART if stop.is_set() else EXIT_FAILED


# What the Functions host does with serve's exit code (Workers/ProcessManagement/WorkerProcess.cs,
# OnProcessExited): 0 closes the worker for good, so that every later invocation is refused until the whole
# host restarts; 200 starts it again without counting an error; anything else starts it again and counts an
# error, and the third within 30 minutes shuts the host down. So serve never exits 0: after SIGTERM or
# SIGINT (an operator's, or Ctrl-C under `func start`; the host itself only ever kills) it exits 200, and bad
# settings it needs exit 2 (the host logs stderr's last lines). The other commands keep 0 for success: cron
# and systemd read it.
EXIT_RESTART = 200
_serve = with_settings(serve)


def serve_command(args: argparse.Namespace) -> int:
    """serve with the settings it reads. WEBSITE_TIME_ZONE is the host's (the timer's zone; the Linux host
    only warns about it): serve never reads it, so a value it could not read, such as a Windows zone name
    copied from another plan (`GMT Standard Time`), must not exit 2 at every start and stop the host."""
    os.environ.pop("WEBSITE_TIME_ZONE", None)
    return _serve(args)


COMMANDS: dict[str, Command] = {
    "serve": serve_command,
    "reclaim": with_settings(reclaim),
    "run": with_settings(run),
    "status": with_settings(status),
    "check": with_settings(check),
    "dead-letter": with_settings(dead_letter),
    "consumers": with_settings(consumers),
    "demo": demo,
}
