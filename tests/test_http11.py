"""The stub's HTTP/1.1 server: keep-alive and its reuse by the pilot and pilot-stub,
pipelining, chunked bodies, 100-continue, malformed requests and back-pressure."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_stub.http11 import HTTPServer
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
    assert len(done.stdout.splitlines()) == 6
    stats = stub.server.httpd.stats
    assert stats["requests"] - before["requests"] == 6
    assert stats["connections"] - before["connections"] == 1


def test_pilot_reuses_connections(stub: Stub, tmp_path: Path) -> None:
    """Several jobs through one pilot: a few connections (one per thread that talks to
    the stub at the same time), not one per request."""
    ids = stub.submit('Executable = "/bin/true"; Parameters = 5;')
    done = run_pilot(
        ["run", "--server", stub.url, "--max-concurrent", "1", *FAST], cwd=tmp_path
    )
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
