"""A small HTTP/1.1 WSGI server: keep-alive, a bounded worker pool, back-pressure.

One thread, the loop, accepts connections and watches the waiting ones with a selector.
A connection with bytes to read is handed to one of ``workers`` threads, which goes on
with the TLS handshake, serves the request (and any the client has already sent behind
it), and gives the connection back to the loop. A worker never waits for a client to
start or finish a handshake or a request head: with no more bytes there yet, the
connection goes back to the loop with what it has so far. So a thousand pilots keeping a
connection open cost a thousand sockets, not a thousand threads, and clients that
connect and say nothing (or a byte at a time) cannot take the workers from the others.

Back-pressure: with ``max_connections`` open, the loop closes the connection idle the
longest (between requests) to make room, and when none is idle it stops accepting until
one closes; new clients then wait in the kernel's listen backlog. A connection idle for
``keepalive_timeout`` is closed; a TLS handshake must be done within
``handshake_timeout`` of the connection, a request head within ``request_timeout`` of
its first byte (or of the connection).

Bodies and responses have a minimum pace: a worker may spend at most
``request_timeout + moved / min_rate`` seconds waiting on the client's socket while a
request's body comes in (``moved``: its bytes so far), and as long again while the
response goes out; no single read or write waits more than ``request_timeout``. That is
an average of ``min_rate`` bytes a second after a grace of ``request_timeout``. A normal
upload or download is far faster (the default, 16 KiB/s, is 1 GiB in 18 hours; loopback
and WAN transfers move it in seconds to minutes), while a client that drips a body or
reads a download a few bytes at a time would otherwise keep a worker as long as it
likes. The application's own time (between its reads of the body, or making the
response) is not counted. A body that falls behind is answered ``408 Request Timeout``
and its connection closed; a response that falls behind has its connection closed;
both are logged as warnings naming the client's address.

Requests: HTTP/1.0 and 1.1, bodies by ``Content-Length`` or chunked, ``Expect:
100-continue``. Responses keep the connection when their length is known (or chunked
for HTTP/1.1) and the request's body was read; a file response (``wsgi.file_wrapper``)
goes out with ``sendfile`` on plain connections. Any WSGI application can be served;
``environ["stub.peer_identity"]`` carries the verified client certificate's identity
when ``peer_identity`` is given.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import re
import select
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import Any, BinaryIO
from urllib.parse import unquote

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MAX_HEAD = 64 << 10  # request line + headers
MAX_HEADERS = 100
RECV = 256 << 10
DRAIN_LIMIT = 1 << 20  # unread request body a connection is kept after
SENDFILE = 1 << 20  # bytes per sendfile call


_FIELD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 token)

_date_cache: tuple[int, str] = (0, "")


def _peer(conn: Connection) -> str:
    """The client's address for a log line."""
    addr = conn.addr
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr) or "a local client"


def _http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


class BadRequest(Exception):
    def __init__(self, message: str, status: str = "400 Bad Request") -> None:
        super().__init__(message)
        self.status = status
        self.answerable = True  # False once a response has started: then only close


class _Closed(Exception):
    """The client closed the connection (or it failed) between requests."""


class _Incomplete(Exception):
    """The client has not sent the rest of its handshake or request head yet."""


class _SlowReader(Exception):
    """The client does not take the response at the server's minimum pace."""


class _Pace:
    """The minimum pace of a body or a response: the time spent waiting on the client's
    socket may not pass ``grace + moved / rate`` seconds for ``moved`` bytes (the
    application's own time between reads or writes is not counted)."""

    __slots__ = ("grace", "moved", "rate", "waited")

    def __init__(self, grace: float, rate: float) -> None:
        self.grace = grace
        self.rate = rate
        self.moved = 0
        self.waited = 0.0

    def wait(self) -> float:
        """Seconds the next read or write may wait (at most ``grace``); 0 when behind."""
        left = self.grace + self.moved / self.rate - self.waited
        return max(0.0, min(self.grace, left))

    def count(self, moved: int, since: float) -> None:
        self.moved += moved
        self.waited += time.monotonic() - since

    def describe(self) -> str:
        return f"{self.moved} bytes in {self.waited:.1f} s of waiting on the client"


class Connection:
    __slots__ = ("addr", "buf", "deadline", "head_since", "identity", "ready", "sock")

    def __init__(self, sock: socket.socket, addr: Any, ready: bool, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.ready = ready  # TLS handshake done (or plain)
        self.identity: str | None = None
        self.head_since: float | None = time.monotonic()  # waiting for a head since
        self.deadline = deadline  # closed by the loop if still waiting then

    def fill(self) -> bool:
        """Receive more into ``buf``; False at end of stream."""
        data = self.sock.recv(RECV)
        if not data:
            return False
        self.buf += data
        return True

    def has_more(self) -> bool:
        """Bytes already here for a next request (ours or in the TLS layer)."""
        if self.buf:
            return True
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0


class FileWrapper:
    """``wsgi.file_wrapper``: lets the server send a file with ``sendfile``."""

    def __init__(self, filelike: BinaryIO, blksize: int = 1 << 20) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.filelike.read(self.blksize):
            yield chunk

    def close(self) -> None:
        self.filelike.close()


class _Body:
    """``wsgi.input``: exactly the request's body, by length or chunked."""

    def __init__(self, conn: Connection, length: int | None, chunked: bool, pace: _Pace) -> None:
        self.conn = conn
        self.remaining = length or 0  # of the body, or of the current chunk
        self.chunked = chunked
        self.done = not chunked and not length
        self.pace = pace
        self.failed: BadRequest | None = None  # why reading it stopped, once it did

    def _recv(self, n: int) -> bytes:
        """Up to ``n`` bytes from the socket, waiting no longer than the pace allows."""
        if self.failed is not None:
            raise self.failed
        since = time.monotonic()
        try:
            wait = self.pace.wait()
            if wait <= 0:
                raise TimeoutError
            self.conn.sock.settimeout(wait)
            data = self.conn.sock.recv(n)
        except TimeoutError:
            self.pace.count(0, since)
            self.failed = BadRequest(
                f"request body too slow ({self.pace.describe()})", "408 Request Timeout"
            )
            raise self.failed from None
        self.pace.count(len(data), since)
        return data

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes of the connection (at least one), from the buffer first."""
        buf = self.conn.buf
        if not buf:  # straight from the socket: never more than this body (or chunk) holds
            data = self._recv(min(n, 1 << 20))
            if not data:
                raise BadRequest("body ended early")
            return data
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _line(self) -> bytes:
        buf = self.conn.buf
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > 4096:
                raise BadRequest("bad chunked body")
            data = self._recv(RECV)
            if not data:
                raise BadRequest("bad chunked body")
            buf += data
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    def _next_chunk(self) -> None:
        size_text = self._line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            while self._line():  # trailers
                pass
            self.done = True
        self.remaining = size

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self.remaining == 0:
                if not self.chunked:
                    self.done = True
                    break
                self._next_chunk()
                continue
            want = self.remaining if size < 0 else min(self.remaining, size - len(out))
            data = self._take(want)
            out += data
            self.remaining -= len(data)
            if self.chunked and self.remaining == 0:
                if self._line():
                    raise BadRequest("bad chunked body")
            elif not self.chunked and self.remaining == 0:
                self.done = True
        return bytes(out)

    def readline(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            byte = self.read(1)
            if not byte:
                break
            out += byte
            if byte == b"\n":
                break
        return bytes(out)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def drain(self, limit: int) -> bool:
        """Read what the application left of the body; False if more than ``limit``."""
        left = limit
        while not self.done:
            data = self.read(min(left, 1 << 20))
            left -= len(data)
            if left <= 0 and not self.done:
                return False
        return True


class HTTPServer:
    def __init__(
        self,
        address: tuple[str, int],
        app: WSGIApp,
        *,
        ssl_context: ssl.SSLContext | None = None,
        peer_identity: Callable[[ssl.SSLSocket], str | None] | None = None,
        workers: int = 16,
        max_connections: int = 1000,
        keepalive_timeout: float = 30.0,
        request_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        min_rate: float = 16 << 10,
        linger: float = 0.05,
        backlog: int = 128,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind(address)
            self.socket.listen(backlog)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self.app = app
        self.ssl_context = ssl_context
        self.peer_identity = peer_identity
        self.workers = workers
        self.max_connections = max_connections
        self.keepalive_timeout = keepalive_timeout
        self.request_timeout = request_timeout
        self.handshake_timeout = handshake_timeout
        self.min_rate = min_rate  # bytes/s a body or response must average (after grace)
        # connections accepted, requests read, idle ones closed to make room, idle now
        # and connections closed for a body or a response below min_rate
        self.stats = {"connections": 0, "requests": 0, "closed_idle": 0, "idle": 0, "slow": 0}
        self._open = 0
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._back: collections.deque[Connection] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._pool: list[threading.Thread] = []
        self._paused = False
        self._lingering = 0
        self.linger = linger

    # -- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._pool = [
            threading.Thread(target=self._worker, name=f"stub-worker-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in self._pool:
            thread.start()
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        # Parked connections: between requests, longest idle first (these may be closed
        # to make room), and in the middle of a handshake or request head (these not).
        idle: dict[Connection, None] = {}
        waiting: set[Connection] = set()
        last_sweep = time.monotonic()
        try:
            while not self._stopping.is_set():
                try:
                    last_sweep = self._turn(sel, idle, waiting, last_sweep)
                except Exception:  # never let one bad turn stop the server accepting
                    log.exception("HTTP server loop")
                    time.sleep(0.1)
        finally:
            for conn in [*idle, *waiting]:
                self._close(conn)
            sel.close()
            self._stopped.set()

    def _turn(
        self,
        sel: selectors.BaseSelector,
        idle: dict[Connection, None],
        waiting: set[Connection],
        last_sweep: float,
    ) -> float:
        """One round of the loop: accept, dispatch readable connections, park returned
        ones, close those that waited too long, pause or resume accepting."""
        for key, _ in sel.select(timeout=1.0):
            if key.data == "listen":
                self._accept(sel, idle, waiting)
            elif key.data == "wake":
                self._drain_wake()
            elif key.data in idle or key.data in waiting:  # (not closed to make room)
                conn = key.data
                sel.unregister(conn.sock)
                idle.pop(conn, None)
                waiting.discard(conn)
                self._work.put(conn)
        while self._back:
            conn = self._back.popleft()
            if conn.ready and conn.head_since is None:
                conn.deadline = time.monotonic() + self.keepalive_timeout
                idle[conn] = None
            else:
                waiting.add(conn)
            sel.register(conn.sock, selectors.EVENT_READ, conn)
        now = time.monotonic()
        if now - last_sweep >= 1.0:
            last_sweep = now
            for conn in [c for c in (*idle, *waiting) if c.deadline < now]:
                sel.unregister(conn.sock)
                idle.pop(conn, None)
                waiting.discard(conn)
                self._close(conn)
        self._pause_or_resume(sel, idle)
        self.stats["idle"] = len(idle)
        return last_sweep

    def _accept(
        self, sel: selectors.BaseSelector, idle: dict[Connection, None], waiting: set[Connection]
    ) -> None:
        while True:
            with self._lock:
                full = self._open >= self.max_connections
            if full and not idle:
                return
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            if full:  # make room: close the longest-idle connection
                oldest = next(iter(idle))
                sel.unregister(oldest.sock)
                del idle[oldest]
                self._close(oldest)
                with self._lock:
                    self.stats["closed_idle"] += 1
            with self._lock:
                self._open += 1
                self.stats["connections"] += 1
            sock.setblocking(True)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            conn = Connection(sock, addr, True, now + self.request_timeout)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError) as exc:
                    log.debug("TLS wrap failed for %s: %s", addr, exc)
                    self._close(conn)
                    continue
                conn = Connection(sock, addr, False, now + self.handshake_timeout)
            # to a worker once the client has sent something
            waiting.add(conn)
            sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _pause_or_resume(self, sel: selectors.BaseSelector, idle: dict[Connection, None]) -> None:
        with self._lock:  # _close reads _paused under the lock to know whether to wake us
            full = self._open >= self.max_connections and not idle
            if full == self._paused:
                return
            self._paused = full
        if full:
            sel.unregister(self.socket)
        else:
            sel.register(self.socket, selectors.EVENT_READ, "listen")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake, or shutting down
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _close(self, conn: Connection) -> None:
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._lock:
            self._open -= 1
            paused = self._paused
        if paused:
            self._wake()

    # -- workers ----------------------------------------------------------------------------

    def _worker(self) -> None:
        while (conn := self._work.get()) is not None:
            try:
                keep = self._serve(conn)
            except Exception:
                log.exception("connection from %s failed", conn.addr)
                keep = False
            if keep and not self._stopping.is_set():
                self._back.append(conn)
                self._wake()
            else:
                self._close(conn)

    def _serve(self, conn: Connection) -> bool:
        """Serve requests on ``conn`` while some are waiting; True to keep it open."""
        sock = conn.sock
        try:
            if not conn.ready and isinstance(sock, ssl.SSLSocket):
                self._handshake(sock)
                if self.peer_identity is not None:
                    conn.identity = self.peer_identity(sock)
                conn.ready = True
            while True:
                if not self._request(conn):
                    return False
                if not conn.has_more() and not self._linger(conn):
                    return True
        except _Incomplete:  # back to the loop until the client sends more
            if conn.head_since is None:
                conn.head_since = time.monotonic()
            if conn.ready:
                conn.deadline = conn.head_since + self.request_timeout
            return True
        except (_Closed, TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.debug("connection from %s ended: %s", conn.addr, exc)
            return False
        except OSError as exc:
            log.debug("connection from %s failed: %s", conn.addr, exc)
            return False

    def _handshake(self, sock: ssl.SSLSocket) -> None:
        """Go on with the TLS handshake as far as the client's bytes allow."""
        sock.settimeout(0)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            raise _Incomplete from None
        except ssl.SSLWantWriteError:  # our side does not fit the socket's buffer: wait
            sock.settimeout(self.handshake_timeout)
            sock.do_handshake()

    def _linger(self, conn: Connection) -> bool:
        """Wait a moment for the client's next request when no other connection needs a
        worker (and at most half the workers do so): a client sending requests one after
        the other is then served without two hand-offs between threads per request."""
        with self._lock:
            if self._lingering >= self.workers // 2 or not self._work.empty():
                return False
            self._lingering += 1
        try:
            poll = select.poll()  # not select(): descriptors may be above 1024
            poll.register(conn.sock, select.POLLIN)
            return bool(poll.poll(self.linger * 1000))
        finally:
            with self._lock:
                self._lingering -= 1

    def _request(self, conn: Connection) -> bool:
        """Read and answer one request; True when the connection may serve another."""
        try:
            head = self._read_head(conn)
            if head is None:
                return False
            environ, body, keep = self._environ(conn, head)
        except BadRequest as exc:
            self._send_error(conn, exc.status, str(exc))
            return False
        with self._lock:
            self.stats["requests"] += 1
        if environ.get("HTTP_EXPECT", "").lower() == "100-continue" and not body.done:
            conn.sock.settimeout(self.request_timeout)
            conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            keep = self._respond(conn, environ, body, keep)
        except BadRequest as exc:
            if exc.status.startswith("408"):
                self._count_slow()
                log.warning("%s: %s; answered 408 and closed", _peer(conn), exc)
            else:
                log.debug("bad request body from %s: %s", conn.addr, exc)
            if exc.answerable:
                self._send_error(conn, exc.status, str(exc))
            return False
        except _SlowReader as exc:
            self._count_slow()
            log.warning("%s: response not read (%s); closed", _peer(conn), exc)
            return False
        if keep:
            try:
                keep = body.drain(DRAIN_LIMIT)
            except BadRequest as exc:
                if exc.status.startswith("408"):
                    self._count_slow()
                    log.warning("%s: %s after the response; closed", _peer(conn), exc)
                return False
        return keep

    def _count_slow(self) -> None:
        with self._lock:
            self.stats["slow"] += 1

    def _read_head(self, conn: Connection) -> bytes | None:
        """The next request head; raises _Incomplete when the rest is not there yet."""
        buf = conn.buf
        sock = conn.sock
        start = 0
        while (end := buf.find(b"\r\n\r\n", start)) < 0:
            if buf[:1] == b"\x16":  # a TLS handshake on a plain-HTTP port: say so at once
                raise BadRequest("TLS sent to a plain HTTP server: use http://")
            if len(buf) > MAX_HEAD:
                raise BadRequest("request head too large", "431 Request Header Fields Too Large")
            start = max(0, len(buf) - 3)
            if sock.gettimeout() != 0:
                sock.settimeout(0)  # take what is there, never wait for a head
            try:
                more = conn.fill()
            except (BlockingIOError, ssl.SSLWantReadError):
                raise _Incomplete from None
            if not more:
                if buf:
                    raise _Closed("closed within a request head")
                return None
        if end > MAX_HEAD:
            raise BadRequest("request head too large", "431 Request Header Fields Too Large")
        head = bytes(buf[:end])
        del buf[: end + 4]
        conn.head_since = None
        return head

    def _environ(self, conn: Connection, head: bytes) -> tuple[dict[str, Any], _Body, bool]:
        lines = head.decode("latin-1").split("\r\n")
        while lines and not lines[0]:  # stray empty lines before a request are allowed
            lines.pop(0)
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise BadRequest("bad request line")
        method, target, version = parts
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest("HTTP version not supported", "505 HTTP Version Not Supported")
        if len(lines) - 1 > MAX_HEADERS:
            raise BadRequest("too many headers", "431 Request Header Fields Too Large")
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": self.server_address[0],
            "SERVER_PORT": str(self.server_address[1]),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": str(conn.addr[0]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self.ssl_context is not None else "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        if isinstance(conn.sock, ssl.SSLSocket):
            environ["stub.peer_identity"] = conn.identity
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip() or line[0] in " \t":
                raise BadRequest("malformed header line")
            key = name.upper().replace("-", "_")
            value = value.strip()
            if key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
                if key in environ and environ[key] != value:
                    raise BadRequest(f"conflicting {name} headers")
                environ[key] = value
                continue
            key = "HTTP_" + key
            environ[key] = f"{environ[key]}, {value}" if key in environ else value
        chunked = False
        coding = environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if coding:
            if coding != "chunked":
                raise BadRequest("only chunked transfer coding", "501 Not Implemented")
            if "CONTENT_LENGTH" in environ:
                raise BadRequest("both Content-Length and Transfer-Encoding")
            chunked = True
        length = None
        if "CONTENT_LENGTH" in environ:
            text = environ["CONTENT_LENGTH"]
            if not text.isdigit():
                raise BadRequest("bad Content-Length")
            length = int(text)
        connection = environ.get("HTTP_CONNECTION", "").lower()
        keep = "close" not in connection
        if version == "HTTP/1.0":
            keep = "keep-alive" in connection
        pace = _Pace(self.request_timeout, self.min_rate)
        environ["wsgi.input"] = body = _Body(conn, length, chunked, pace)
        return environ, body, keep

    def _respond(self, conn: Connection, environ: dict[str, Any], body: _Body, keep: bool) -> bool:
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            if exc_info is not None and started and started[2]:
                raise exc_info[1].with_traceback(exc_info[2])
            for name, value in headers:
                if not _FIELD.fullmatch(name) or "\r" in value or "\n" in value:
                    raise ValueError(f"bad response header {name!r}: {value!r}")
            started[:] = [status, headers, False]
            return write

        def write(data: bytes) -> None:
            raise NotImplementedError("use the returned iterable")

        result = self.app(environ, start_response)
        if body.failed is not None:  # whatever the application made of it: 408, closed
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise body.failed
        if not body.done and (body.chunked or body.remaining > DRAIN_LIMIT):
            keep = False  # too much body left unread to skip it for a next request
        try:
            return self._write_response(conn, environ, started, result, keep)
        except BadRequest as exc:  # the application read the body while answering
            exc.answerable = not (started and started[2])
            raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _write_response(
        self,
        conn: Connection,
        environ: dict[str, Any],
        started: list[Any],
        result: Iterable[bytes],
        keep: bool,
    ) -> bool:
        if not started:
            raise RuntimeError("application did not call start_response")
        status, headers = started[0], started[1]
        head_only = environ["REQUEST_METHOD"] == "HEAD"
        names = {name.lower() for name, _ in headers}
        http11 = environ["SERVER_PROTOCOL"] == "HTTP/1.1"
        bodyless = head_only or status[:3] in ("204", "304") or status[0] == "1"
        chunked = not bodyless and "content-length" not in names and http11
        if not bodyless and "content-length" not in names and not http11:
            keep = False
        if self._stopping.is_set():
            keep = False
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "connection"]
        if "date" not in names:
            lines.append(f"Date: {_http_date()}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        lines.append("Connection: " + ("keep-alive" if keep else "close"))
        out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        started[2] = True
        sock = conn.sock
        pace = _Pace(self.request_timeout, self.min_rate)
        if bodyless:
            self._send(sock, pace, out)
            return keep
        if (
            isinstance(result, FileWrapper)
            and not chunked
            and not isinstance(sock, ssl.SSLSocket)
            and hasattr(result.filelike, "fileno")
        ):
            self._send(sock, pace, out)
            self._sendfile(sock, pace, result.filelike)
            return keep
        for chunk in result:
            if not chunk:
                continue
            if chunked:
                out += b"%x\r\n" % len(chunk) + chunk + b"\r\n"
            else:
                out += chunk
            if len(out) >= 1 << 16:
                self._send(sock, pace, out)
                out = b""
        if chunked:
            out += b"0\r\n\r\n"
        if out:
            self._send(sock, pace, out)
        return keep

    @staticmethod
    def _send(sock: socket.socket, pace: _Pace, data: bytes) -> None:
        """All of ``data``, as fast as the client takes it but not slower than the pace."""
        view = memoryview(data)
        while view:
            wait = pace.wait()
            if wait <= 0:
                raise _SlowReader(pace.describe())
            sock.settimeout(wait)
            since = time.monotonic()
            try:
                sent = sock.send(view)
            except TimeoutError:
                pace.count(0, since)
                raise _SlowReader(pace.describe()) from None
            pace.count(sent, since)
            view = view[sent:]

    @staticmethod
    def _sendfile(sock: socket.socket, pace: _Pace, filelike: BinaryIO) -> None:
        """The rest of a file with ``sendfile``, at the pace like :meth:`_send`."""
        fd = filelike.fileno()
        offset = filelike.tell()
        sock.settimeout(0)
        poll = select.poll()
        poll.register(sock, select.POLLOUT)
        while True:
            wait = pace.wait()
            since = time.monotonic()
            if wait <= 0 or not poll.poll(wait * 1000):
                pace.count(0, since)
                raise _SlowReader(pace.describe())
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, SENDFILE)
            except BlockingIOError:
                sent = -1
            pace.count(max(sent, 0), since)
            if sent == 0:
                return
            if sent > 0:
                offset += sent

    def _send_error(self, conn: Connection, status: str, message: str) -> None:
        body = json.dumps({"detail": message}).encode()
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            conn.sock.settimeout(min(self.request_timeout, 1.0))  # a few bytes: buffered
            conn.sock.sendall(head.encode() + body)

    # -- stopping -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the loop (and the workers once their requests are answered)."""
        self._stopping.set()
        self._wake()
        if self._pool:
            self._stopped.wait(10)

    def server_close(self) -> None:
        for _ in self._pool:
            self._work.put(None)
        deadline = time.monotonic() + 5
        for thread in self._pool:  # a worker still reading a slow request is left (daemon)
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        while self._back:
            self._close(self._back.popleft())
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()
