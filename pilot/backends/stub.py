"""HTTP to the matcher stub: one httpx client, bounded jittered retries, typed calls.

:class:`HttpClient` does one job: send a request, retry it (tenacity) on transport
errors and 5xx answers only, translate failures into :mod:`pilot.errors`, and stream
files both ways. :class:`StubBackend` implements :class:`pilot.backends.base.Backend` on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx

from pilot.backends.base import OWNER_IDENTITY, OWNER_PROXY, Inputs, MatchedJob, StatusUpdate
from pilot.errors import (
    AuthError,
    NoStoredProxy,
    SandboxError,
    ServerError,
    ServerUnreachable,
    UsageError,
    write_error,
)

if TYPE_CHECKING:
    import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # total tries of one call
    max_wait: float = 10.0  # cap of one jittered back-off, seconds
    deadline: float = 120.0  # give up on one call after this long


class _Retryable(Exception):
    """A 5xx answer: worth another try."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {_detail(response)}")
        self.response = response


class HttpClient:
    """One connection pool to one server; every call retried and translated."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: ssl.SSLContext | bool = True,
        bearer: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": "pilot-agent"}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._settings: dict[str, Any] = {
            "base_url": self.base_url,
            "verify": verify,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "transport": transport,
        }
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def http(self) -> httpx.Client:
        """The connection pool, made on first use (its transport costs an import)."""
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**self._settings)
            return self._client

    def prepare(self) -> None:
        """Make the pool in the background while the pilot does other start-up work."""
        threading.Thread(target=lambda: self.http, name="http-prepare", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _with_retries(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried (tenacity) on transport errors and 5xx answers.

        The first attempt runs on its own and tenacity is imported only when it fails:
        most calls never do, and that keeps ~8 ms of imports off the pilot's start-up.
        Tenacity then counts the failure already met as its attempt 1, so the attempts,
        the back-off and the deadline are those of :class:`RetryPolicy` all the same."""
        started = time.monotonic()
        try:
            return fn(*args, **kwargs)
        except (httpx.TransportError, _Retryable) as exc:
            met: list[BaseException] = [exc]

        def attempt() -> T:
            if met:
                raise met.pop()
            return fn(*args, **kwargs)

        return self._retrying(time.monotonic() - started)(attempt)

    def _retrying(self, spent: float) -> tenacity.Retrying:
        import tenacity

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type((httpx.TransportError, _Retryable)),
            stop=tenacity.stop_after_attempt(self.retry.attempts)
            | tenacity.stop_after_delay(max(0.0, self.retry.deadline - spent)),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=self.retry.max_wait),
            before_sleep=_log_retry,
            reraise=True,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request (retried); returns a 2xx response or raises a PilotError."""
        try:
            return self._with_retries(self._send_once, method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.base_url}: {method} {path}: {exc}") from exc
        except _Retryable as exc:
            raise ServerError(f"{method} {path}: server error {exc}", 500) from exc

    def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        start = time.monotonic()
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            _raise_if_tls_refusal(exc, self.base_url)
            raise
        log.debug(
            "%s %s -> %d (%.0f ms)",
            method,
            path,
            response.status_code,
            (time.monotonic() - start) * 1000,
        )
        _raise_for_status(method, path, response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        return response.json() if response.status_code != 204 else None

    def upload(self, path: str, source: Path, headers: Mapping[str, str] | None = None) -> Any:
        """PUT a file, streamed from disk in chunks; returns the JSON answer."""
        size = source.stat().st_size
        all_headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        all_headers.update(headers or {})

        def attempt() -> httpx.Response:
            return self._send_once(
                "PUT",
                path,
                content=_read_chunks(source, size, f"upload {source.name}"),
                headers=all_headers,
            )

        try:
            response = self._with_retries(attempt)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.base_url}: upload of {source.name}: {exc}") from exc
        except _Retryable as exc:
            raise ServerError(f"upload of {source.name}: server error {exc}", 500) from exc
        return response.json()

    def download(self, path: str, dest: Path, sha256: str | None = None) -> int:
        """GET into ``dest`` in chunks, checking ``sha256``; returns the size."""
        try:
            return self._with_retries(self._download_once, path, dest, sha256)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.base_url}: download {path}: {exc}") from exc
        except _Retryable as exc:
            raise ServerError(f"download {path}: server error {exc}", 500) from exc

    def _download_once(self, path: str, dest: Path, sha256: str | None) -> int:
        try:
            return self._stream_to(path, dest, sha256)
        except httpx.TransportError as exc:
            _raise_if_tls_refusal(exc, self.base_url)
            raise

    def _stream_to(self, path: str, dest: Path, sha256: str | None) -> int:
        with self.http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for_status("GET", path, response)
            total = int(response.headers.get("content-length") or 0)
            progress = _Progress(f"download {dest.name}", total)
            # Undecoded bytes arrive fastest; decode only when the server encoded them.
            encoded = response.headers.get("content-encoding", "identity") != "identity"
            chunks = response.iter_bytes() if encoded else response.iter_raw()
            digest = _write_and_hash(chunks, dest, progress)
        if sha256 is not None and digest != sha256:
            dest.unlink(missing_ok=True)
            raise SandboxError(f"checksum mismatch for {dest.name}: got {digest}")
        progress.done()
        return progress.done_bytes


def _write_and_hash(chunks: Iterator[bytes], dest: Path, progress: _Progress) -> str:
    """Write and hash in a second thread while this one reads the network: both
    hashlib and file writes release the GIL, so the three overlap."""
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=16)  # bounds memory: 16 chunks
    digest = hashlib.sha256()
    failure: list[OSError] = []

    def writer() -> None:
        try:
            with dest.open("wb") as out:
                while (chunk := pending.get()) is not None:
                    out.write(chunk)
                    digest.update(chunk)
        except OSError as exc:
            failure.append(exc)
            while pending.get() is not None:  # keep draining so the reader never blocks
                pass

    thread = threading.Thread(target=writer, name=f"write-{dest.name}", daemon=True)
    thread.start()
    try:
        for chunk in chunks:
            if failure:
                break
            pending.put(chunk)
            progress.add(len(chunk))
    finally:
        pending.put(None)
        thread.join()
    if failure:
        raise write_error(failure[0], dest) from failure[0]
    return digest.hexdigest()


# Called with (what, bytes so far, total or 0, finished) as a transfer moves, when set:
# a command-line program draws a progress line on its terminal with it.
ProgressHook = Callable[[str, int, int, bool], None]
progress_hook: ProgressHook | None = None


class _Progress:
    """Logs a long transfer every few seconds so an operator sees it move (and tells
    :data:`progress_hook`, if set, after every chunk)."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.done_bytes = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done_bytes += n
        if progress_hook is not None:
            progress_hook(self.what, self.done_bytes, self.total, False)
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            rate = self.done_bytes / (now - self.start) / 2**20
            of = f" of {self.total / 2**20:.0f}" if self.total else ""
            log.info("%s: %.0f%s MiB (%.0f MiB/s)", self.what, self.done_bytes / 2**20, of, rate)

    def done(self) -> None:
        if progress_hook is not None:
            progress_hook(self.what, self.done_bytes, self.total, True)
        elapsed = time.monotonic() - self.start
        if elapsed >= PROGRESS_EVERY_S:
            log.info("%s: %.0f MiB in %.1f s", self.what, self.done_bytes / 2**20, elapsed)


def _read_chunks(source: Path, size: int, what: str) -> Iterator[bytes]:
    progress = _Progress(what, size)
    with source.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            progress.add(len(chunk))
            yield chunk
    progress.done()


def _detail(response: httpx.Response) -> str:
    if not _is_json(response):
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        return f"({kind} answer, not from a pilot-agent matcher)"
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]


def _is_json(response: httpx.Response) -> bool:
    return "json" in response.headers.get("content-type", "")


def _raise_for_status(method: str, path: str, response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    if code >= 500:
        raise _Retryable(response)
    if not _is_json(response):  # another web server on that port: a wrong URL
        raise UsageError(
            f"{response.url.scheme}://{response.url.netloc.decode()}: {code} {_detail(response)};"
            " check the server URL and port"
        )
    message = f"{method} {path}: {code} {_detail(response)}"
    if code in (401, 403):
        raise AuthError(message, code)
    raise ServerError(message, code)


def _raise_if_tls_refusal(exc: httpx.TransportError, where: str) -> None:
    """A TLS failure (bad or missing certificate on either side) is not worth retrying."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
            raise UsageError(f"{where}: the server does not speak TLS; is it an http:// URL?")
        if isinstance(seen, ssl.SSLError) or "alert" in text.lower():
            raise AuthError(f"{where}: TLS refused: {seen}") from exc
        seen = seen.__cause__ or seen.__context__
    return


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("server call failed (%s); retry %d in %.1f s", exc, state.attempt_number, wait)


def fetch_url(url: str, dest: Path) -> None:
    """A plain download: no bearer token, no client certificate goes to a foreign host."""
    with HttpClient(url, retry=RetryPolicy(attempts=4, deadline=300.0)) as plain:
        plain.download(url, dest)


class StubBackend:
    """:class:`pilot.backends.base.Backend` for the matcher stub's REST API."""

    name = "stub"

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.stamp = ""
        self._request_id: str | None = None  # a match request not yet answered for sure

    def register(self, stamp: str, info: Mapping[str, Any]) -> None:
        self.stamp = stamp
        self.http.json("POST", "/api/pilots", json={"stamp": stamp, "info": dict(info)})

    def match(self, resources: Mapping[str, Any]) -> MatchedJob | None:
        """Ask for a job. The request carries an id that its retries reuse, also after
        the call gave up (the server may have claimed a job whose reply was lost): the
        stub answers a known id with the job it claimed for it."""
        if self._request_id is None:
            self._request_id = os.urandom(16).hex()
        body = {"pilot": self.stamp, "resources": dict(resources), "request_id": self._request_id}
        try:
            answer = self.http.json("POST", "/api/jobs/match", json=body)
        except ServerUnreachable:
            raise  # no answer: the next match asks with the same id
        except ServerError as exc:
            if exc.status is None or exc.status >= 500:
                raise
            self._request_id = None  # a definite answer
            if exc.status == 409:  # the job claimed for a lost reply has moved on (deleted,
                # or rescheduled during a long outage): this pilot holds nothing; ask anew
                log.warning("match: %s; asking again", exc)
                return None
            raise
        self._request_id = None
        if answer is None:
            return None
        extra = {OWNER_PROXY: bool(answer["owner_proxy"])} if "owner_proxy" in answer else {}
        if "owner" in answer:
            extra[OWNER_IDENTITY] = bool(answer["owner"])
        return MatchedJob(str(answer["job_id"]), answer["jdl"], answer.get("token"), extra)

    def dry_run_match(self, resources: Mapping[str, Any]) -> dict[str, Any]:
        body = {"pilot": self.stamp or "dry-run", "resources": dict(resources), "dry_run": True}
        answer: dict[str, Any] = self.http.json("POST", "/api/jobs/match", json=body)
        return answer

    def _job_headers(self, job: MatchedJob) -> dict[str, str]:
        return {"X-Job-Token": job.token} if job.token else {}

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        self.set_statuses(job, [update])

    def set_statuses(self, job: MatchedJob, updates: Sequence[StatusUpdate]) -> None:
        """Several updates of one job in one request (the wire format takes a timestamp
        each); a repeat of an update already recorded is harmless on the stub."""
        body = {job.job_id: {repr(u.timestamp): _status_fields(u) for u in updates}}
        self.http.json("PATCH", "/api/jobs/status", json=body, headers=self._job_headers(job))

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """The server's pending commands (``Kill``) for these running jobs: a light read."""
        body = {"pilot": self.stamp, "jobs": [int(j) for j in job_ids]}
        answer = self.http.json("POST", "/api/jobs/commands", json=body)
        return _commands(answer, "/api/jobs/commands")

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        body = {job.job_id: dict(metrics)}
        answer = self.http.json(
            "PATCH", "/api/jobs/heartbeat", json=body, headers=self._job_headers(job)
        )
        pairs = _commands(answer, "/api/jobs/heartbeat")
        return tuple(command for job_id, command in pairs if job_id == job.job_id)

    def fetch_input_sandbox(self, job: MatchedJob, inputs: Inputs, dest_dir: Path) -> list[Path]:
        paths = []
        for entry in inputs.sandboxes:
            sha = entry[3:]
            if not _SHA256.fullmatch(sha):
                raise SandboxError(f"Input sandbox rejected: bad sandbox reference {entry[:80]!r}")
            dest = dest_dir / f"sandbox-{sha[:16]}"
            self.http.download(f"/api/sandboxes/{sha}", dest, sha)
            paths.append(dest)
        return paths

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        sha = sha256_file(archive)
        self.http.upload(f"/api/sandboxes/{sha}", archive)
        self.http.json(
            "PATCH",
            f"/api/jobs/{job.job_id}/sandbox/output",
            json={"sha256": sha},
            headers=self._job_headers(job),
        )

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        entry = self.http.json("GET", file_route(lfn))
        self.http.download(f"/api/sandboxes/{entry['sha256']}", dest, entry["sha256"])

    def store_lfn(
        self, job: MatchedJob, lfn: str, source: Path, output_se: str | None = None
    ) -> None:
        sha = sha256_file(source)
        self.http.upload(f"/api/sandboxes/{sha}", source)
        body: dict[str, Any] = {"sha256": sha, "size": source.stat().st_size}
        if job.job_id.isdigit():  # the stub records the file as the job's owner's
            body["job_id"] = int(job.job_id)
        self.http.json("PUT", file_route(lfn), json=body, headers=self._job_headers(job))

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        body = {"request": request_pem, "lifetime": lifetime, "limited": limited}
        answer = self.http.json(
            "POST", f"/api/jobs/{job.job_id}/proxy", json=body, headers=self._job_headers(job)
        )
        chain = answer.get("chain") if isinstance(answer, dict) else None
        if not chain:
            detail = answer.get("detail") if isinstance(answer, dict) else None
            raise NoStoredProxy(str(detail or f"no proxy for the owner of job {job.job_id}"))
        return str(chain)

    def payload_token(
        self, job: MatchedJob, secret: str, lifetime: int
    ) -> tuple[str, float] | None:
        """A bearer token for the job's payload (its owner's files, its own status) and
        when it expires; None when the job has no owner. The same ``secret`` gives the
        same token, so a retry whose answer was lost, or a renewal, mints nothing new."""
        body = {"secret": secret, "lifetime": lifetime}
        answer = self.http.json(
            "POST",
            f"/api/jobs/{job.job_id}/bearer-token",
            json=body,
            headers=self._job_headers(job),
        )
        if not isinstance(answer, dict):
            raise ServerError(f"/api/jobs/{job.job_id}/bearer-token: not a JSON object")
        token, expires = answer.get("token"), answer.get("expires")
        if token is None:
            return None
        if not isinstance(token, str) or not isinstance(expires, int | float):
            raise ServerError(f"/api/jobs/{job.job_id}/bearer-token: no token and expiry")
        return token, float(expires)

    def upload_pilot_log(self, stamp: str, text: str) -> None:
        self.http.json("PUT", f"/api/pilots/{stamp}/log", json={"log": text})

    def close(self) -> None:
        self.http.close()


def file_route(lfn: str) -> str:
    """The catalogue route of ``lfn``, escaped: a ``?`` or ``#`` in a name is the name's."""
    return "/api/files/" + quote(lfn, safe="/:")


def _commands(answer: Any, path: str) -> list[tuple[str, str]]:
    """``[{job_id, command}]`` as ``(job_id, command)`` pairs; anything else is the
    server's error, not the pilot's crash."""
    try:
        return [(str(c["job_id"]), str(c["command"])) for c in answer or ()]
    except (KeyError, TypeError) as exc:
        raise ServerError(f"{path}: not a list of commands ({exc!r})") from None


def _status_fields(update: StatusUpdate) -> dict[str, Any]:
    fields: dict[str, Any] = {"Source": "Pilot"}
    if update.status is not None:
        fields["Status"] = str(update.status)
    if update.minor is not None:
        fields["MinorStatus"] = update.minor
    if update.application is not None:
        fields["ApplicationStatus"] = update.application
    fields.update(update.extra)
    return fields


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
