"""The payload's own credential: a proxy delegated from its owner's, fetched per job.

For each job the pilot makes a key pair and a certificate request, and asks its backend
(``Backend.delegate_proxy``, with that job's credentials) to have the request signed by
the proxy the job's owner stored on the server: the stub's proxy store, or DIRAC's
ProxyManager. No private key crosses the network. The result is written into the job
directory (mode 0600) and given to the payload as ``X509_USER_PROXY``; the pilot's own
proxy is never given. The lifetime is the job's wall time plus a margin, capped; a job
that outlives its proxy gets a fresh one before the old one expires (the file is replaced
atomically). The file is removed when the payload ends, before the output is packed.

A job whose owner has no stored proxy (:class:`~pilot.errors.NoStoredProxy`) runs without
one, unless its JDL says ``PayloadProxy = "Required"``; then it fails, as it does on any
other delegation failure (the server refused, the answer was not a proxy for our key).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pilot.backends.base import OWNER_PROXY, MatchedJob
from pilot.errors import CredentialError, NoStoredProxy, PilotError, UsageError

if TYPE_CHECKING:
    from pilot.grid import credentials

log = logging.getLogger(__name__)

PROXY_FILE = ".payload-proxy.pem"  # in the job directory; dot name: never globbed by "*"
FAILED_MINOR = "Failed to get payload proxy"
MODES = ("full", "limited", "off")


class Delegator(Protocol):
    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        """PEM certificates (the new proxy first) for ``request_pem``, signed by the proxy
        of the job's owner; NoStoredProxy when the owner has none."""


@dataclass(frozen=True)
class DelegationPolicy:
    mode: str = "full"  # full | limited | off
    margin: float = 3600.0  # added to the job's wall time
    max_lifetime: float = 48 * 3600.0  # cap on one proxy's lifetime; longer jobs renew
    default_wall: float = 24 * 3600.0  # a job with no wall-time limit at all
    renew_fraction: float = 0.25  # renew when this fraction of a proxy's lifetime is left

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"payload_proxy: {self.mode!r} is not one of {', '.join(MODES)}")
        if not 60 <= self.max_lifetime <= 366 * 86400:
            hours = self.max_lifetime / 3600
            raise UsageError(
                f"payload_proxy_max_hours: {hours:g} is out of range (give 0.02 to 8784)"
            )

    def lifetime(self, wall_seconds: float | None) -> int:
        wall = self.default_wall if wall_seconds is None else wall_seconds
        return max(60, int(min(wall + self.margin, self.max_lifetime)))


def required(jdl_value: object) -> bool:
    """JDL ``PayloadProxy = "Required"``: the job must not run without its owner's proxy."""
    return isinstance(jdl_value, str) and jdl_value.strip().lower() == "required"


class RenewedFile:
    """A credential file of one job in its directory, renewed by a thread of its own
    until remove(): the part the payload proxy and the payload token share."""

    join_timeout = 30.0  # seconds remove() waits for a renewal under way

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stop = threading.Event()
        self._file_lock = threading.Lock()  # a renewal never writes after remove()
        self._thread: threading.Thread | None = None

    def _write(self, write: Callable[[Path], None]) -> None:
        """``write(self.path)``, unless the file was removed while the server answered."""
        with self._file_lock:
            if not self._stop.is_set():
                write(self.path)

    def _start(self, loop: Callable[[], None], name: str) -> None:
        self._thread = threading.Thread(target=loop, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the renewal thread (if one started) to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def remove(self) -> None:
        """Stop renewing and delete the file (before the output sandbox is packed)."""
        self._stop.set()
        self.join(self.join_timeout)
        with self._file_lock:
            self.path.unlink(missing_ok=True)


class PayloadProxy(RenewedFile):
    """One job's delegated proxy file: obtained, renewed in the background, removed."""

    def __init__(
        self,
        backend: Delegator,
        job: MatchedJob,
        job_dir: Path,
        lifetime: int,
        policy: DelegationPolicy,
    ) -> None:
        super().__init__(job_dir / PROXY_FILE)
        self.backend = backend
        self.job = job
        self.lifetime = lifetime
        self.policy = policy
        self.identity: str | None = None

    def obtain(self) -> credentials.Proxy:
        """Ask for a new proxy and (re)write the file; CredentialError/ServerError on failure."""
        if self.job.extra.get(OWNER_PROXY) is False:
            raise NoStoredProxy("the server holds no proxy of this job's owner")
        from pilot.grid import credentials  # X.509 (cryptography) only for a job that delegates

        key, request = credentials.new_proxy_request()
        chain = self.backend.delegate_proxy(
            self.job, request.decode(), self.lifetime, self.policy.mode == "limited"
        )
        proxy, pem = credentials.proxy_from_chain(key, chain.encode())
        credentials.validate(proxy)
        if self.identity is not None and proxy.identity != self.identity:
            raise CredentialError(
                f"renewed proxy is for {proxy.identity_slash}, not the job's owner"
            )
        self._write(lambda path: credentials.write_proxy(path, pem))
        if self._stop.is_set():
            return proxy
        self.identity = proxy.identity
        act_as_owner = getattr(self.backend, "use_owner_proxy", None)
        if act_as_owner is not None:  # a backend that stages the job's data as its owner
            act_as_owner(self.job, proxy)
        log.info(
            "job %s: payload proxy of %s, %s left",
            self.job.job_id,
            proxy.identity_slash,
            timedelta(seconds=int(proxy.time_left().total_seconds())),
        )
        return proxy

    def start_renewal(self, proxy: credentials.Proxy) -> None:
        self._start(lambda: self._renew_loop(proxy), f"proxy-renewal-{self.job.job_id}")

    def _renew_loop(self, proxy: credentials.Proxy) -> None:
        # The share is of what the server gave, which may be less than we asked for (its
        # own cap, or the owner's stored proxy ending first).
        span = proxy.time_left().total_seconds()
        while True:
            left = proxy.time_left().total_seconds()
            wait = max(1.0, left - span * self.policy.renew_fraction)
            if self._stop.wait(wait):
                return
            try:
                fresh = self.obtain()
            except PilotError as exc:
                # The old proxy stays until it expires; try again in a while.
                log.warning("job %s: payload proxy not renewed: %s", self.job.job_id, exc)
            else:
                extended = fresh.not_after > proxy.not_after
                proxy, span = fresh, fresh.time_left().total_seconds()  # what the file holds
                if extended:
                    continue
                # The owner's stored proxy ends first: asking again at once gains nothing
                # until the owner stores a new one.
                log.info(
                    "job %s: payload proxy not extended: the owner's ends first", self.job.job_id
                )
            if self._stop.wait(min(300.0, max(5.0, left / 4))):
                return
