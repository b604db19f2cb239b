"""A small loopback TCP proxy in front of a real Redis, to inject network faults deterministically:
cut every connection once N bytes have gone to the server (mid-pipeline), or stall (hold all bytes) until
healed. The faults are real: the client sees a reset socket or a silent one."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from handler.dev.local_redis import free_port


class FaultyProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        self._sent_to_server = 0
        self._stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_after(self, upstream_bytes: int) -> None:
        """Reset every connection once this many more bytes have been forwarded to the server."""
        with self._lock:
            self._sent_to_server = 0
            self._cut_after = upstream_bytes

    def stall(self) -> None:
        self._stalled.set()

    def heal(self) -> None:
        with self._lock:
            self._cut_after = None
        self._stalled.clear()

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        self._close_all()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is down: the client sees its connection closed
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self._closing.is_set():
                if self._stalled.is_set():
                    self._closing.wait(0.01)
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client and self._count_and_check_cut(len(data)):
                        self._reset(client, server)
                        return
                    peers[source].sendall(data)
        except OSError:
            return
        finally:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.close()

    def _count_and_check_cut(self, size: int) -> bool:
        with self._lock:
            if self._cut_after is None:
                return False
            self._sent_to_server += size
            if self._sent_to_server <= self._cut_after:
                return False
            self.cuts += 1
            return True

    def _reset(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close with a TCP reset, as a dropped connection looks to the client.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
