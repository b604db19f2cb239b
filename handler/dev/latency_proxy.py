"""A loopback latency proxy: every chunk it relays arrives half a round trip late, in each direction, and
throughput is not limited (there is no `tc netem` here).

    python -m handler.dev.latency_proxy --target-port 6379 --rtt-ms 1

Each direction of each connection is a timestamped queue and one thread: every chunk received is stamped
with the time it is due (received + rtt/2), and the thread waits (select, microsecond timeouts) for
whichever comes first, more bytes to receive or the oldest chunk's time, then sends every chunk that is due
in one write. So any number of chunks are in flight during one delay, as on a real link (a sleep per read
would allow one chunk per delay), and no chunk waits for another thread to wake up. Bytes are relayed
unchanged: TLS passes through, so the server's certificate must name the proxy's address.

It prints `listening 127.0.0.1:<port>` when ready and runs until SIGTERM or SIGINT. Run as its own process,
so its CPU is its own: the benchmark reads it from /proc/<pid>/stat (`cpu_seconds`). The round-trip
benchmark (bench/azure_bench.py) and the profile (bench/profile.py) put it in front of Debian's TLS Redis.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 1 << 18
PR_SET_TIMERSLACK = 29
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CHECKOUT = Path(__file__).resolve().parents[2]  # the child imports this checkout's module


def cpu_seconds(pid: int) -> float:
    """User plus system CPU a process has used so far (fields 14 and 15 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces; fields after it are fixed
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Connection:
    """Both sockets of one relayed connection, closed once both directions have ended."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.sockets = (client, server)
        self.lock = threading.Lock()
        self.open_directions = 2

    def direction_ended(self) -> None:
        with self.lock:
            self.open_directions -= 1
            if self.open_directions:
                return
        for side in self.sockets:
            side.close()


class Direction:
    """One direction of one connection: a queue of received chunks, each stamped with when it is due, and
    one thread that waits (select) for whichever comes first, the source's next bytes or the oldest chunk's
    time, so reading never waits for a delay and a delay never waits for a read."""

    def __init__(
        self, connection: Connection, source: socket.socket, target: socket.socket, delay: float
    ) -> None:
        self.connection = connection
        self.source, self.target, self.delay = source, target, delay

    def start(self) -> None:
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        try:
            self.relay()
            self.target.shutdown(socket.SHUT_WR)
        except OSError:
            for side in (self.source, self.target):
                with contextlib.suppress(OSError):
                    side.shutdown(socket.SHUT_RDWR)
        finally:
            self.connection.direction_ended()

    def relay(self) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        source_open = True
        while source_open or queue:
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
            if source_open:
                readable, _, _ = select.select([self.source], [], [], timeout)
            else:  # the source has closed: deliver what is still on its way, then close
                time.sleep(timeout or 0.0)
                readable = []
            if readable:
                data = self.source.recv(CHUNK)
                if data:
                    queue.append((time.monotonic() + self.delay, data))
                else:
                    source_open = False
            now = time.monotonic()
            due: list[bytes] = []
            while queue and queue[0][0] <= now:
                due.append(queue.popleft()[1])
            if due:
                self.target.sendall(b"".join(due))


def fine_timers() -> None:
    """Ask Linux for 1 µs timer slack (the default, 50 µs, would add up to 0.1 ms to every round trip);
    threads started after this inherit it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def serve(listener: socket.socket, target_port: int, rtt_ms: float) -> None:
    delay = rtt_ms / 2000
    while True:
        client, _ = listener.accept()
        try:
            server = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for side in (client, server):
            side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(client, server)
        Direction(connection, client, server, delay).start()
        Direction(connection, server, client, delay).start()


class LatencyProxy:
    """The proxy as a child process of the benchmark, in front of a local server's port."""

    def __init__(self, target_port: int, rtt_ms: float, added_ms: float | None = None) -> None:
        """`rtt_ms`: the round trip this proxy stands for; `added_ms`: the delay it adds (default the same;
        less once calibrated, since relaying through a process costs some of the round trip itself)."""
        self.rtt_ms = rtt_ms
        self.added_ms = rtt_ms if added_ms is None else added_ms
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "handler.dev.latency_proxy",
                "--target-port",
                str(target_port),
                "--rtt-ms",
                str(self.added_ms),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=CHECKOUT,
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rtt-ms", type=float, required=True, help="round trip added (half each way)")
    parser.add_argument("--port", type=int, default=0, help="where to listen (default: any free port)")
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port), backlog=128)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fine_timers()
    print(f"listening 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(listener, args.target_port, args.rtt_ms)


if __name__ == "__main__":
    main()
