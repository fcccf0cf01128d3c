"""A fault-injecting TCP proxy for loopback tests: resets, delays, blackouts, lost replies.

    proxy = FaultProxy(("127.0.0.1", stub_port), Faults(reset_fraction=0.1))
    proxy.start()            # listens on proxy.port (127.0.0.1 only)
    proxy.blackout(True)     # cut every open connection, refuse new ones (RST)
    proxy.blackout(False)
    proxy.drop_replies(b"POST /api/jobs/match", 1)   # the server acts, its reply is lost
    proxy.retarget(("127.0.0.1", new_port))          # the server came back elsewhere
    proxy.stop()

Each request gets its fate as the client sends it: with ``reset_fraction`` its connection
is cut (RST to both sides) after a random number of bytes in either direction (deciding
per request, not per connection, keeps the rate when clients keep connections alive);
every forwarded chunk may wait ``delay`` seconds (a random value in the range). Both ends must be on
loopback; the proxy accepts at most ``max_connections`` connections over its life and
stops by itself after ``max_seconds``, so a test that forgets it cannot run forever.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    reset_fraction: float = 0.0  # share of requests whose connection is cut after a while
    reset_after_max: int = 4096  # the cut comes after 0..this many bytes
    delay: tuple[float, float] = (0.0, 0.0)  # seconds added before each forwarded chunk
    seed: int | None = None


def _loopback(address: tuple[str, int]) -> tuple[str, int]:
    if not ipaddress.ip_address(address[0]).is_loopback:
        raise ValueError(f"the fault proxy works on loopback only, not {address[0]}")
    return address


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset', as on a WAN drop."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    def __init__(
        self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket, budget: int
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.budget = budget  # bytes left before a planned reset; -1: none planned
        self.doomed_reply = False  # a request whose reply is to be lost went through
        self.last_to_server = False  # the direction of the last chunk forwarded
        self.closed = False
        self.lock = threading.Lock()

    def cut(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        _reset(self.client)
        _reset(self.upstream)

    def run(self) -> None:
        socks = [self.client, self.upstream]
        try:
            while not self.closed:
                ready, _, _ = select.select(socks, [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        self.cut()
                        return
                    if not self._forward(sock, data):
                        return
        except (OSError, ValueError):
            self.cut()
        finally:
            self.proxy._forget(self)

    def _forward(self, sock: socket.socket, data: bytes) -> bool:
        to_server = sock is self.client
        if to_server and self.proxy._wants_lost_reply(data):
            self.doomed_reply = True
        if not to_server and self.doomed_reply:
            self.proxy.lost_replies += 1
            self.cut()  # the server acted on the request; the client never hears of it
            return False
        starts_request = to_server and not self.last_to_server  # the client speaks anew
        self.last_to_server = to_server
        if starts_request and self.budget < 0 and self.proxy.doom_request():
            self.budget = self.proxy.rng.randint(0, self.proxy.faults.reset_after_max)
        if self.budget >= 0:
            if len(data) >= self.budget:
                with contextlib.suppress(OSError):
                    (self.upstream if to_server else self.client).sendall(data[: self.budget])
                self.proxy.resets += 1
                self.cut()
                return False
            self.budget -= len(data)
        low, high = self.proxy.faults.delay
        if high > 0:
            time.sleep(self.proxy.rng.uniform(low, high))
        (self.upstream if to_server else self.client).sendall(data)
        return True


class FaultProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        faults: Faults = Faults(),
        *,
        max_connections: int = 100_000,
        max_seconds: float = 1800.0,
    ) -> None:
        self.upstream = _loopback(upstream)
        self.faults = faults
        self.rng = random.Random(faults.seed)
        self.max_connections = max_connections
        self.max_seconds = max_seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._dark = False
        self._stop = threading.Event()
        self._lost: list[tuple[bytes, int]] = []
        self.connections = 0
        self.resets = 0
        self.refused = 0
        self.lost_replies = 0
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        self._cut_all()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test changes while it runs ------------------------------------------------

    def blackout(self, dark: bool) -> None:
        """Dark: every open connection is cut and new ones are reset at once."""
        with self._lock:
            self._dark = dark
        if dark:
            self._cut_all()

    def doom_request(self) -> bool:
        """Whether the request starting now is to have its connection cut."""
        return self.faults.reset_fraction > 0 and self.rng.random() < self.faults.reset_fraction

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def retarget(self, upstream: tuple[str, int]) -> None:
        self.upstream = _loopback(upstream)

    def drop_replies(self, request_prefix: bytes, count: int = 1) -> None:
        """Lose the reply to the next ``count`` requests starting with ``request_prefix``
        (the request reaches the server, the connection is reset when it answers)."""
        with self._lock:
            self._lost.append((request_prefix, count))

    def keep_replies(self) -> None:
        """Stop losing replies."""
        with self._lock:
            self._lost.clear()

    # -- internals ------------------------------------------------------------------------

    def _wants_lost_reply(self, data: bytes) -> bool:
        with self._lock:
            for i, (prefix, count) in enumerate(self._lost):
                if count > 0 and data.startswith(prefix):
                    self._lost[i] = (prefix, count - 1)
                    return True
        return False

    def _cut_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept(self) -> None:
        ends = time.monotonic() + self.max_seconds
        self.listener.settimeout(0.2)
        while not self._stop.is_set() and time.monotonic() < ends:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.connections > self.max_connections:
                _reset(client)
                return
            with self._lock:
                dark = self._dark
            if dark:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self.refused += 1
                _reset(client)  # the server is down: the client sees a reset
                continue
            link = _Link(self, client, upstream, -1)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=link.run, name="fault-link", daemon=True).start()
        self._cut_all()
