"""The stub's HTTP(S) server (:mod:`server_stub.http11`), plus its stalled-job reaper."""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pilot.errors import CredentialError
from pilot.grid import credentials
from server_stub.app import AuthPolicy, StubApp
from server_stub.http11 import HTTPServer
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
    proxy_cas: tuple[x509.Certificate, ...] = ()  # CAs uploaded proxies must lead to
    workers: int = 16  # threads serving requests
    max_connections: int = 1000  # open client connections (kept alive or busy)
    keepalive_timeout: float = 30.0  # seconds an idle connection is kept
    request_timeout: float = 60.0  # seconds for a request head; a body's and response's grace
    min_rate: float = 16 << 10  # bytes/s a body or response must average after that grace


def _peer_identity(conn: ssl.SSLSocket) -> str | None:
    """End-entity DN of a verified client chain (proxies allowed), or None."""
    try:
        chain = credentials.peer_der_chain(conn)
        return credentials.identity_from_peer_chain(chain, slash=True) if chain else None
    except (CredentialError, ssl.SSLError, ValueError) as exc:
        log.warning("unusable client certificate chain: %s", exc)
        return None


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
            settings.proxy_cas,
        )
        # TLS handshakes happen in the worker threads, not in the accepting loop.
        self.httpd = HTTPServer(
            (settings.host, settings.port),
            app,
            ssl_context=settings.ssl_context,
            peer_identity=_peer_identity,
            workers=settings.workers,
            max_connections=settings.max_connections,
            keepalive_timeout=settings.keepalive_timeout,
            request_timeout=settings.request_timeout,
            min_rate=settings.min_rate,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address
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
