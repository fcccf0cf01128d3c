"""Threaded HTTP(S) server for the stub, plus its background stalled-job reaper."""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from pilot.errors import CredentialError
from pilot.grid import credentials
from server_stub.app import AuthPolicy, StubApp
from server_stub.sandboxes import SandboxStore
from server_stub.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    db: Path
    sandbox_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_sandbox_bytes: int = 10 << 30
    max_parametric: int = 1000
    stalled_after: float = 900.0  # seconds without heartbeat before a job is Stalled
    reap_interval: float = 30.0
    max_reschedules: int = 3
    ssl_context: ssl.SSLContext | None = None
    insecure: bool = False  # allow plain HTTP on a non-loopback address
    auth: AuthPolicy = field(default_factory=lambda: AuthPolicy())


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["stub.peer_identity"] = _peer_identity(self.connection)
        return environ


def _peer_identity(conn: ssl.SSLSocket) -> str | None:
    """End-entity DN of a verified client chain (proxies allowed), or None."""
    try:
        chain = credentials.peer_der_chain(conn)
        return credentials.identity_from_peer_chain(chain, slash=True) if chain else None
    except (CredentialError, ssl.SSLError, ValueError) as exc:
        log.warning("unusable client certificate chain: %s", exc)
        return None


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class StubServer:
    """Owns the store, the HTTP server thread and the reaper thread."""

    def __init__(self, settings: ServerSettings) -> None:
        _refuse_plain_http_off_loopback(settings)
        self.settings = settings
        self.store = Store(settings.db)
        app = StubApp(
            self.store,
            SandboxStore(settings.sandbox_dir, settings.max_sandbox_bytes),
            settings.max_parametric,
            settings.auth,
        )
        if ":" in settings.host:
            ThreadingServer.address_family = socket.AF_INET6
        self.httpd = make_server(settings.host, settings.port, app, ThreadingServer, _Handler)
        if settings.ssl_context is not None:
            # The handshake happens in each request's thread, not in the accept loop.
            self.httpd.socket = settings.ssl_context.wrap_socket(
                self.httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        scheme = "https" if self.settings.ssl_context is not None else "http"
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"{scheme}://{shown}:{port}"

    def start(self) -> None:
        for target, name in ((self.httpd.serve_forever, "http"), (self._reap, "reaper")):
            thread = threading.Thread(target=target, name=f"stub-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _reap(self) -> None:
        while not self._stop.wait(self.settings.reap_interval):
            try:
                stalled = self.store.reap_stalled(
                    self.settings.stalled_after, self.settings.max_reschedules
                )
            except Exception:
                log.exception("stalled-job reaper failed")
                continue
            for job_id in stalled:
                log.warning(
                    "job %d stalled: no heartbeat for %.0f s", job_id, self.settings.stalled_after
                )

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _refuse_plain_http_off_loopback(settings: ServerSettings) -> None:
    if settings.ssl_context is not None or settings.insecure:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        raise ValueError(
            f"refusing plain HTTP on {settings.host}: give a certificate or --insecure"
        )
