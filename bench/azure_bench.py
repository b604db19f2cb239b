"""The round-trip part of ./scripts/bench: every contender under Azure's conditions, TLS and a network.

Azure Cache for Redis speaks TLS only, and a Function reaches it over a network with a round trip of about
0.5-1 ms in one region. Here: Debian's redis-server 7.0.15 (the one build at hand with TLS,
handler/dev/redis_binaries.py) with a certificate for 127.0.0.1/localhost from a private CA made with
openssl, and handler/dev/latency_proxy.py in front of it adding each round trip (0, 0.5 and 1 ms by default).
The proxy relays the TLS bytes unchanged, so every contender verifies the server's certificate as the
monitor does in Azure (REDIS_TLS=true, REDIS_TLS_CA_FILE).

Each round trip is measured (sequential PINGs through the proxy) and printed beside the set one, with the
proxy's own CPU during every run; the server limit is also run without the proxy, beside the 0 ms row, to
show that the proxy is not what limits it. Repetitions are interleaved over all round trips and contenders.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path

from bench.backlog import produce
from bench.reclaim_bench import (
    PAGE_SIZE,
    PINGS,
    Cell,
    Endpoint,
    HttpHandler,
    contenders,
    measure,
    ping_round_trip,
    server_info,
    server_limit,
)
from bench.results import Recorder
from bench.server_limit import command_stream
from handler.dev.backlog import raw_client
from handler.dev.latency_proxy import LatencyProxy
from handler.dev.local_redis import LocalRedis
from handler.dev.redis_binaries import debian_redis_with_tls
from handler.dev.tls import Certificates, make_certificates
from handler.dev.tls import tls_server as start_tls_server

NO_PROXY = "server limit (no proxy)"


@contextmanager
def tls_server() -> Iterator[tuple[LocalRedis, Certificates]]:
    """Debian's Redis 7.0.15 speaking only TLS, its certificate naming localhost and 127.0.0.1 (the proxy's
    address), from a private CA made as the suite makes them (handler/dev/tls.py)."""
    with tempfile.TemporaryDirectory(prefix="tweets-monitor-bench-tls-") as folder:
        certificates = make_certificates(Path(folder))
        server = start_tls_server(
            debian_redis_with_tls(), certificates.server_cert, certificates.server_key, certificates.ca
        )
        try:
            yield server, certificates
        finally:
            server.cleanup()


def calibrated_proxy(
    port: int, rtt: float, base: float | None, ca: Path
) -> tuple[LatencyProxy, float, float, float]:
    """A proxy whose PING round trip (TLS, median) is `rtt`, within 3 % or 0.02 ms: it adds rtt less what
    the relay itself costs (measured at 0 ms: `base`), corrected twice at most. At 0 ms it adds nothing.
    (proxy, median ms, p95 ms, the proxy's CPU seconds over the PINGs)."""
    added = 0.0 if rtt == 0 else max(0.0, rtt - (base or 0.0))
    for attempt in range(3):
        proxy = LatencyProxy(port, rtt, added)
        cpu_before = proxy.cpu_seconds()
        median, p95 = ping_round_trip(proxy.port, ssl=True, ssl_ca_certs=str(ca))
        cpu = proxy.cpu_seconds() - cpu_before
        if rtt == 0 or abs(median - rtt) <= max(0.02, 0.03 * rtt) or attempt == 2:
            return proxy, median, p95, cpu
        proxy.stop()
        added = max(0.0, added + rtt - median)
    raise AssertionError("unreachable")


def run_azure(
    sizes: list[int], rtts: list[float], repeat: int | None, seed_size: int | None, recorder: Recorder
) -> None:
    """Every contender at every round trip, TLS throughout, medians of 3 unless `repeat` says otherwise;
    the original algorithm at `seed_size` entries when given (a smaller backlog: it is slow at 1 ms)."""
    with tls_server() as (server, certificates), ExitStack() as stack:
        ca = certificates.ca
        client = raw_client(server.port, ssl=True, ssl_ca_certs=str(ca))
        recorder.server("azure", server_info(client))
        version = recorder.meta["servers"]["azure"]["redis_version"]
        direct = Endpoint(server.port, ca)
        median, p95 = ping_round_trip(server.port, ssl=True, ssl_ca_certs=str(ca))
        recorder.round_trip(
            part="azure", rtt_ms=None, through="direct", tls=True, median_ms=median, p95_ms=p95
        )
        print(
            f"Round trips: Debian Redis {version} with TLS on {server.address}; PING without the proxy:"
            f" median {median:.3f} ms (p95 {p95:.3f})",
            flush=True,
        )
        proxies: dict[float, LatencyProxy] = {}
        base: float | None = None
        for rtt in sorted(rtts):
            proxy, median, p95, cpu = calibrated_proxy(server.port, rtt, base, ca)
            base = median if rtt == 0 else base
            stack.callback(proxy.stop)
            proxies[rtt] = proxy
            recorder.round_trip(
                part="azure",
                rtt_ms=rtt,
                through="proxy",
                tls=True,
                added_ms=proxy.added_ms,
                median_ms=median,
                p95_ms=p95,
                proxy_cpu_s=cpu,
            )
            print(
                f"  proxy for {rtt:g} ms (adds {proxy.added_ms:.3f} ms, port {proxy.port}): PING median"
                f" {median:.3f} ms (p95 {p95:.3f}), proxy CPU {cpu:.2f} s for {PINGS + 20} PINGs",
                flush=True,
            )
        for size in sizes:
            produce(client, size)
            chunks = command_stream(client, PAGE_SIZE)  # packed once, before any clock starts
            seed = min(seed_size or size, size)
            cells: list[Cell] = []
            with ExitStack() as handlers:
                for rtt, proxy in proxies.items():
                    endpoint = Endpoint(proxy.port, ca)
                    handler = HttpHandler(endpoint)
                    handlers.callback(handler.stop)
                    for approach, n, run in contenders(endpoint, handler, chunks, size, seed):
                        cells.append(Cell(approach, n, run, rtt, proxy, size))
                    if rtt == min(rtts):
                        run = partial(server_limit, direct, chunks, size)
                        cells.append(Cell(NO_PROXY, size, run))
                if seed != size:
                    print(f"  the original algorithm runs at N={seed:,}, every other contender at N={size:,}")
                measure("azure", client, cells, repeat or 3, recorder)
            del chunks
