"""The stub's HTTP/1.1 server: keep-alive and its reuse by the pilot and pilot-stub,
pipelining, chunked bodies, 100-continue, malformed requests and back-pressure."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from server_stub.http11 import FileWrapper, HTTPServer
from tests.conftest import BIN, FAST, Stub, run_pilot, start_stub


def _raw(stub: Stub) -> socket.socket:
    host, port = stub.server.httpd.server_address
    return socket.create_connection((host, port), timeout=30)


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[str, dict[str, str], bytes]:
    """One response off ``sock`` (``buf`` keeps what follows it)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"closed before a response; got {bytes(buf)!r}"
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data
        rest += data
    buf[:] = rest[length:]
    return status, headers, rest[:length]


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_user_client_keeps_one_connection(stub: Stub) -> None:
    (job,) = stub.submit('Executable = "/bin/true";')
    for _ in range(10):
        assert stub.client.job(job)["status"] == "Waiting"
    stats = stub.server.httpd.stats
    assert stats["requests"] == 11 and stats["connections"] == 1, stats


def test_pilot_stub_cli_reuses_its_connection(stub: Stub) -> None:
    ids = stub.submit('Executable = "/bin/true"; Parameters = 6;')
    before = dict(stub.server.httpd.stats)
    done = subprocess.run(
        [str(BIN / "pilot-stub"), "--server", stub.url, "status", *map(str, ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + 6  # a header, then a row per job
    stats = stub.server.httpd.stats
    assert stats["requests"] - before["requests"] == 6
    assert stats["connections"] - before["connections"] == 1


def test_pilot_reuses_connections(stub: Stub, tmp_path: Path) -> None:
    """Several jobs through one pilot: a few connections (one per thread that talks to
    the stub at the same time), not one per request."""
    ids = stub.submit('Executable = "/bin/true"; Parameters = 5;')
    done = run_pilot(["run", "--server", stub.url, "--max-concurrent", "1", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert all(stub.status(i) == "Done" for i in ids)
    stats = stub.server.httpd.stats
    assert stats["requests"] >= 25, stats  # register, matches, statuses, log...
    assert stats["connections"] <= 5, stats


def test_pipelined_requests_and_http10(stub: Stub) -> None:
    sock = _raw(stub)
    with sock:
        sock.sendall(
            b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/pilots HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /api/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        buf = bytearray()
        first = _read_response(sock, buf)
        second = _read_response(sock, buf)
        third = _read_response(sock, buf)
        assert [r[0] for r in (first, second, third)] == [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
        ]
        assert first[1]["connection"] == "keep-alive" and third[1]["connection"] == "close"
        assert _closed(sock)
    with _raw(stub) as old:  # HTTP/1.0 without keep-alive: one request, then closed
        old.sendall(b"GET /api/jobs HTTP/1.0\r\n\r\n")
        status, headers, body = _read_response(old, bytearray())
        assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
        assert body == b"[]" and _closed(old)


def test_chunked_upload_and_expect_continue(stub: Stub) -> None:
    data = b"sandbox bytes " * 5000
    sha = hashlib.sha256(data).hexdigest()
    sock = _raw(stub)
    with sock:
        sock.sendall(
            f"PUT /api/sandboxes/{sha} HTTP/1.1\r\nHost: x\r\n"
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        buf = bytearray()
        interim = _read_response(sock, buf)
        assert interim[0] == "HTTP/1.1 100 Continue"
        for start in range(0, len(data), 7000):
            piece = data[start : start + 7000]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _, body = _read_response(sock, buf)
        assert status == "HTTP/1.1 201 Created", body
        sock.sendall(f"GET /api/sandboxes/{sha} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = _read_response(sock, buf)
        assert status == "HTTP/1.1 200 OK" and body == data
        assert headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\n\r\n", "505"),
        (b"POST /api/jobs/jdl HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400"),
        (
            b"POST /api/jobs/jdl HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", "431"),
        (b"GET / HTTP/1.1\r\n folded: header\r\n\r\n", "400"),
    ],
)
def test_malformed_requests_are_refused_and_closed(
    stub: Stub, request_bytes: bytes, status: str
) -> None:
    with _raw(stub) as sock:
        sock.sendall(request_bytes)
        line, headers, _ = _read_response(sock, bytearray())
        assert line.split()[1] == status and headers["connection"] == "close"
        assert _closed(sock)


def test_a_body_the_application_refused_unread_closes_the_connection(stub: Stub) -> None:
    """A sandbox over the size limit is refused before its body is read; the rest of
    the body must not be taken for a next request."""
    stub.server.httpd.app.sandboxes.max_bytes = 10  # type: ignore[attr-defined]
    with _raw(stub) as sock:
        sock.sendall(
            f"PUT /api/sandboxes/{'0' * 64} HTTP/1.1\r\nContent-Length: {4 << 20}\r\n\r\n".encode()
        )
        status, headers, _ = _read_response(sock, bytearray())
        assert status.split()[1] == "413" and headers["connection"] == "close"


@pytest.fixture
def small_stub(tmp_path: Path) -> Iterator[Stub]:
    handle = start_stub(tmp_path / "small", max_connections=2, workers=4)
    yield handle
    handle.client.close()
    handle.server.stop()


def _wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(200):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_back_pressure_at_max_connections(small_stub: Stub) -> None:
    httpd = small_stub.server.httpd
    assert isinstance(httpd, HTTPServer)
    # Two clients in the middle of a request hold both connections: a third is not
    # accepted (it waits in the listen backlog) until one of them closes.
    busy = [_raw(small_stub) for _ in range(2)]
    for sock in busy:
        sock.sendall(b"GET /api/jobs HTTP/1.1\r\n")  # head not finished
    _wait_for(lambda: httpd.stats["connections"] == 2, "two connections accepted")
    third = _raw(small_stub)
    third.sendall(b"GET /api/pilots HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    assert httpd.stats["connections"] == 2 and httpd.stats["requests"] == 0
    busy[0].sendall(b"Connection: close\r\n\r\n")
    assert _read_response(busy[0], bytearray())[0] == "HTTP/1.1 200 OK"
    busy[0].close()
    assert _read_response(third, bytearray())[0] == "HTTP/1.1 200 OK"
    assert httpd.stats["connections"] == 3
    _wait_for(lambda: httpd.stats["idle"] == 1, "the third connection idle")
    # With both connections idle, a new client makes the longest-idle one close.
    busy[1].sendall(b"\r\n")
    assert _read_response(busy[1], bytearray())[0] == "HTTP/1.1 200 OK"
    _wait_for(lambda: httpd.stats["idle"] == 2, "both connections idle")
    fourth = _raw(small_stub)
    fourth.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _read_response(fourth, bytearray())[0] == "HTTP/1.1 200 OK"
    assert httpd.stats["closed_idle"] == 1
    assert _closed(third)  # idle the longest: closed to make room
    busy[1].sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n")  # still served
    assert _read_response(busy[1], bytearray())[0] == "HTTP/1.1 200 OK"
    for sock in (busy[1], third, fourth):
        sock.close()


def test_idle_connections_time_out(tmp_path: Path) -> None:
    handle = start_stub(tmp_path / "idle", keepalive_timeout=0.5)
    try:
        with _raw(handle) as sock:
            sock.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(sock, bytearray())[0] == "HTTP/1.1 200 OK"
            sock.settimeout(10)
            assert _closed(sock)  # the server closed it after half a second idle
    finally:
        handle.client.close()
        handle.server.stop()


def _hello(environ: dict[str, object], start_response) -> list[bytes]:  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"hi"]


@pytest.fixture
def one_worker() -> Iterator[HTTPServer]:
    """A server with a single worker and short head and handshake limits."""
    httpd = HTTPServer(
        ("127.0.0.1", 0), _hello, workers=1, request_timeout=1.0, handshake_timeout=1.0
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_silent_and_slow_clients_do_not_hold_the_workers(one_worker: HTTPServer) -> None:
    """Clients that connect and say nothing, or send a head a byte at a time, must not
    keep the (single) worker from a client that sends its request at once; a head not
    finished within request_timeout has its connection closed."""
    address = one_worker.server_address
    silent = [socket.create_connection(address, timeout=10) for _ in range(3)]
    slow = [socket.create_connection(address, timeout=10) for _ in range(3)]
    for sock in slow:
        sock.sendall(b"GET / HT")
    time.sleep(0.2)
    started = time.monotonic()
    with socket.create_connection(address, timeout=10) as good:
        good.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = _read_response(good, bytearray())
    assert status == "HTTP/1.1 200 OK" and body == b"hi"
    assert time.monotonic() - started < 0.9  # not after a silent client's time-out
    for sock in slow:  # a byte now and then does not extend the head's time limit
        sock.sendall(b"T")
    for sock in [*silent, *slow]:
        assert _closed(sock)  # within request_timeout (+ the once-a-second sweep)
        sock.close()
    assert time.monotonic() - started < 5


def test_a_tls_client_that_never_finishes_its_handshake_holds_no_worker(
    tmp_path: Path,
) -> None:
    from pilot.grid import credentials
    from testbed.pki import build_pki

    pki = build_pki(tmp_path / "pki")
    ctx = credentials.server_ssl_context(
        pki.hostcert, pki.hostkey, ca_file=pki.ca_file, require_client_cert=False
    )
    httpd = HTTPServer(("127.0.0.1", 0), _hello, ssl_context=ctx, workers=1, handshake_timeout=1.0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        silent = socket.create_connection(httpd.server_address, timeout=10)
        half = socket.create_connection(httpd.server_address, timeout=10)
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        time.sleep(0.2)
        client = credentials.ssl_context(None, ca_file=pki.ca_file)
        started = time.monotonic()
        with client.wrap_socket(
            socket.create_connection(httpd.server_address, timeout=10), server_hostname="localhost"
        ) as good:
            good.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = _read_response(good, bytearray())  # type: ignore[arg-type]
        assert status == "HTTP/1.1 200 OK" and body == b"hi"
        assert time.monotonic() - started < 0.9
        for sock in (silent, half):
            assert _closed(sock)  # after handshake_timeout
            sock.close()
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_line_break_in_a_response_header_is_never_sent() -> None:
    """Response splitting: the server refuses a header value with CR or LF (the
    connection is closed) rather than let it start a header or a response of its own."""

    def splitting(environ: dict[str, object], start_response) -> list[bytes]:  # type: ignore[no-untyped-def]
        start_response("303 See Other", [("Location", "/\r\nSet-Cookie: planted=1")])
        return [b""]

    httpd = HTTPServer(("127.0.0.1", 0), splitting, workers=1)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(httpd.server_address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while data := sock.recv(65536):
                received += data
            assert b"planted" not in received
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the pace of bodies and responses (HTTPServer's min_rate) ---------------------------


@pytest.fixture
def paced_stub(tmp_path: Path) -> Iterator[Stub]:
    """Two workers; a body or response must average 64 KiB/s after half a second."""
    handle = start_stub(tmp_path / "paced", workers=2, request_timeout=0.5, min_rate=64 << 10)
    yield handle
    handle.client.close()
    handle.server.stop()


def _drip(sock: socket.socket, answers: list[bytes]) -> None:
    """Send a body a byte every 0.1 s until the server answers or closes (30 s at most);
    ``answers`` gets what the server sent (empty if it only closed or reset)."""
    for _ in range(300):
        try:
            sock.sendall(b"x")
        except OSError:
            break
        if select.select([sock], [], [], 0.1)[0]:
            break
    received = b""
    with contextlib.suppress(OSError):
        while data := sock.recv(65536):
            received += data
    answers.append(received)


def test_drip_fed_bodies_do_not_hold_the_workers(
    paced_stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    """Three clients that send a sandbox a byte every 0.1 s (the per-read time-out is
    never reached) must not keep the two workers from a normal request; each is answered
    408 (or closed) once it falls behind the minimum pace, with a log line naming it."""
    caplog.set_level(logging.WARNING)
    httpd = paced_stub.server.httpd
    drips = [_raw(paced_stub) for _ in range(3)]
    answers: list[bytes] = []
    threads = []
    for sock in drips:
        sock.sendall(
            f"PUT /api/sandboxes/{'0' * 64} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {1 << 20}\r\n\r\n".encode()
        )
        threads.append(threading.Thread(target=_drip, args=(sock, answers), daemon=True))
        threads[-1].start()
    _wait_for(lambda: httpd.stats["requests"] >= 2, "the drip clients' requests taken")
    with socket.create_connection(httpd.server_address, timeout=10) as good:
        good.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = _read_response(good, bytearray())
    assert status == "HTTP/1.1 200 OK" and body == b"[]"
    for thread in threads:
        thread.join(timeout=40)
        assert not thread.is_alive()
    assert len(answers) == 3
    for answer in answers:  # 408, or a reset when a byte crossed the server's close
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert httpd.stats["slow"] == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for sock in drips:
        port = sock.getsockname()[1]
        assert f"127.0.0.1:{port}: request body too slow" in logged
        sock.close()


def test_a_normal_upload_and_download_keep_to_the_pace(paced_stub: Stub, tmp_path: Path) -> None:
    """The pace is far below a real transfer: an 8 MiB sandbox goes up and comes back
    (with sendfile) on a server whose grace is half a second."""
    data = os.urandom(8 << 20)
    path = tmp_path / "sandbox.bin"
    path.write_bytes(data)
    sha = paced_stub.client.put_sandbox(path)
    assert sha == hashlib.sha256(data).hexdigest()
    with _raw(paced_stub) as sock:
        sock.sendall(f"GET /api/sandboxes/{sha} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _, body = _read_response(sock, bytearray())
    assert status == "HTTP/1.1 200 OK" and body == data
    assert paced_stub.server.httpd.stats["slow"] == 0


BIG = 256 << 20  # a response far larger than what a slow reader takes in the test


def _endless(environ: dict[str, object], start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
    """Answers /file from a sparse file (sendfile), anything else from a generator."""
    start_response("200 OK", [("Content-Length", str(BIG))])
    if environ["PATH_INFO"] == "/file":
        return FileWrapper(open(str(environ["test.file"]), "rb"))  # closed by the server
    block = b"z" * (1 << 20)
    return (block for _ in range(BIG >> 20))


def _read_slowly(sock: socket.socket, got: list[int]) -> None:
    """Read 512 KiB every 0.125 s (4 MiB/s) until the server closes (30 s at most)."""
    total = 0
    with contextlib.suppress(OSError):
        for _ in range(240):
            data = sock.recv(512 << 10)
            if not data:
                break
            total += len(data)
            time.sleep(0.125)
    got.append(total)


@pytest.mark.parametrize("path", ["/file", "/generated"])
def test_slow_readers_of_a_large_response_do_not_hold_the_workers(
    path: str, tmp_path: Path
) -> None:
    """Two clients reading a 256 MiB response at 4 MiB/s (fast enough for each write to
    find room in the socket within request_timeout, so that they would keep the workers
    for a minute) must not keep the two workers from a third client: the server asks for
    32 MiB/s after a second's grace here, and closes them."""
    sparse = tmp_path / "big"
    with sparse.open("wb") as out:
        out.truncate(BIG)

    def app(environ: dict[str, object], start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
        if environ["PATH_INFO"] == "/hello":
            return _hello(environ, start_response)
        return _endless({**environ, "test.file": sparse}, start_response)

    httpd = HTTPServer(("127.0.0.1", 0), app, workers=2, request_timeout=1.0, min_rate=32 << 20)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        readers = []
        for _ in range(2):
            sock = socket.create_connection(httpd.server_address, timeout=10)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            readers.append(sock)
        got: list[int] = []
        threads = [
            threading.Thread(target=_read_slowly, args=(s, got), daemon=True) for s in readers
        ]
        for thread in threads:
            thread.start()
        _wait_for(lambda: httpd.stats["requests"] == 2, "both downloads started")
        with socket.create_connection(httpd.server_address, timeout=10) as good:
            good.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = _read_response(good, bytearray())
        assert status == "HTTP/1.1 200 OK" and body == b"hi"
        for thread in threads:
            thread.join(timeout=40)
            assert not thread.is_alive()
        assert len(got) == 2 and all(0 < n < BIG for n in got), got
        assert httpd.stats["slow"] == 2
        for sock in readers:
            sock.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
