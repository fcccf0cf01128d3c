"""DIRAC's DISET protocol (``dips://``): RPC calls and file transfers over TLS, without DIRAC.

Written from DIRAC 9.1's ``Core/DISET`` (BaseTransport, BaseClient, InnerRPCClient,
TransferClient, FileHelper, Service, RequestHandler) and ``Core/Utilities/JEncode``.

Framing: every message is ``b"<decimal length>:" + payload``; a keep-alive message has
the prefix ``b"dka"`` and carries ``{"OK": True, "Value": {"id": ..., "kaping": bool}}``
(a ping is answered by a pong with the same id). Payloads are JSON (DIRAC's default
since 8.1) with tagged special types: datetime ``{"__dCls": "dt", "obj": "%Y-%m-%d
%H:%M:%S"}``, date ``{"__dCls": "date", ...}``, bytes ``{"__dCls": "b64", "obj": base64}``;
tuples travel as lists, dict keys as strings.

One connection per action (TLS, our proxy chain as client certificate)::

    C -> S  S_OK([[service, setup, vo], [actionType, action], extraCredentials, version])
    S -> C  S_OK()                  or S_ERROR (unauthorized: Errno 1111), then close
    RPC:            C -> S  S_OK([args...]);        S -> C  the method's S_OK/S_ERROR
    FileTransfer:   C -> S  S_OK([fileId, token(, size)]);  S -> C  S_OK("Accepted") | S_ERROR
      FromClient:   C -> S  S_OK([True, chunk]) ...  each acknowledged by S -> C S_OK()
                    (an ack flagged "AbortTransfer" means: stop, the server has the file)
                    C -> S  S_OK([False, md5 hex of all chunks]);  S -> C the result
      ToClient:     S -> C  S_OK([True, chunk]) ...  each acknowledged by C -> S S_OK()
                    S -> C  S_OK([False, md5 hex]);  S -> C the result

Errors: :class:`DisetError` (``errno`` = DIRAC's Errno) and its subclasses
:class:`DisetUnreachable` (connect, TLS, timeout, connection closed) and
:class:`DisetAuthError` (Errno 1111) which are also the pilot's ServerUnreachable and
AuthError; :class:`DisetProtocolError` for malformed frames or payloads.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pilot import __version__
from pilot.errors import AuthError, ServerError, ServerUnreachable

log = logging.getLogger(__name__)

KEEP_ALIVE_MAGIC = b"dka"
CHUNK_SIZE = 1 << 20  # DIRAC's FileHelper packet size
MAX_MESSAGE = 256 << 20  # a bigger length announcement is treated as garbage
MAX_LENGTH_DIGITS = 12
ENOAUTH = 1111
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_FORMAT = "%Y-%m-%d"
RECV_SIZE = 1 << 16


class DisetError(ServerError):
    """A DISET call failed; ``errno`` is DIRAC's Errno (0 when it gave none)."""

    def __init__(self, message: str, errno: int = 0, *, method: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.method = method


class DisetUnreachable(DisetError, ServerUnreachable):
    """No answer: connection refused, TLS failure, timeout, connection closed early."""


class DisetAuthError(DisetError, AuthError):
    """The service refused our credentials (DIRAC's ENOAUTH, 1111)."""


class DisetProtocolError(DisetError):
    """The peer sent something that is not DISET (bad frame, undecodable payload)."""


# --- encoding ---------------------------------------------------------------------------


def _tagged(obj: Any) -> Any:
    if isinstance(obj, dt.datetime):  # DIRAC's times are naive UTC, to the second
        if obj.tzinfo is not None:
            obj = obj.astimezone(dt.UTC).replace(tzinfo=None)
        return {"__dCls": "dt", "obj": obj.isoformat(sep=" ", timespec="seconds")}
    if isinstance(obj, dt.date):
        return {"__dCls": "date", "obj": obj.isoformat()}
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__dCls": "b64", "obj": base64.b64encode(bytes(obj)).decode()}
    raise TypeError(f"cannot send {type(obj).__name__} over DISET")


def _untagged(obj: dict[str, Any]) -> Any:
    kind = obj.get("__dCls")
    if kind == "dt":
        return dt.datetime.strptime(obj["obj"], DATETIME_FORMAT)
    if kind == "date":
        return dt.datetime.strptime(obj["obj"], DATE_FORMAT).date()
    if kind == "b64":
        return base64.b64decode(obj["obj"])
    return obj  # plain dicts, and DIRAC objects (JSerializable) we have no class for


def encode(obj: Any) -> bytes:
    """DIRAC's JEncode: JSON plus tagged datetimes, dates and bytes.

    Datetimes lose their microseconds (as in DIRAC) and aware ones are sent as naive UTC;
    years are zero-padded to four digits (DIRAC's strftime would write ``999``).
    """
    return json.dumps(obj, default=_tagged).encode()


def decode(payload: bytes) -> Any:
    try:
        return json.loads(payload, object_hook=_untagged)
    except (ValueError, KeyError, TypeError) as exc:
        head = payload[:40]
        raise DisetProtocolError(f"undecodable DISET payload {head!r}...: {exc}") from exc


def frame(obj: Any, prefix: bytes = b"") -> bytes:
    payload = encode(obj)
    return prefix + str(len(payload)).encode() + b":" + payload


def s_ok(value: Any = None) -> dict[str, Any]:
    return {"OK": True, "Value": value}


def parse_url(url: str) -> tuple[str, int, str]:
    """``dips://host:port/System/Service`` -> (host, port, "System/Service")."""
    parts = urlsplit(url)
    service = parts.path.strip("/")
    if parts.scheme != "dips" or not parts.hostname or not parts.port or service.count("/") != 1:
        raise ValueError(f"not a DISET service URL (dips://host:port/System/Service): {url!r}")
    return parts.hostname, parts.port, service


# --- one connection -----------------------------------------------------------------------


class Channel:
    """Framed messages over one connected socket (TLS in production, anything in tests)."""

    def __init__(self, sock: socket.socket, where: str, max_message: int = MAX_MESSAGE) -> None:
        self.sock = sock
        self.where = where
        self.max_message = max_message
        self._buffer = bytearray()

    def send(self, obj: Any, prefix: bytes = b"") -> None:
        try:
            self.sock.sendall(frame(obj, prefix))
        except (OSError, ssl.SSLError) as exc:
            raise DisetUnreachable(f"{self.where}: sending failed: {exc}") from exc

    def receive(self) -> Any:
        """The next message, answering keep-alive pings on the way."""
        while True:
            keep_alive = self._strip_keep_alive()
            message = self._read_message()
            if not keep_alive:
                return message
            self._handle_keep_alive(message)

    def _strip_keep_alive(self) -> bool:
        """True (and the magic consumed) when the next message is a keep-alive."""
        while len(self._buffer) < len(KEEP_ALIVE_MAGIC) and KEEP_ALIVE_MAGIC.startswith(
            self._buffer
        ):
            self._recv("a message")
        if self._buffer.startswith(KEEP_ALIVE_MAGIC):
            del self._buffer[: len(KEEP_ALIVE_MAGIC)]
            return True
        return False

    def _read_message(self) -> Any:
        while b":" not in self._buffer[: MAX_LENGTH_DIGITS + 1]:
            if len(self._buffer) > MAX_LENGTH_DIGITS:
                raise DisetProtocolError(f"{self.where}: no length header in {self._buffer[:16]!r}")
            self._recv("a message header")
        head = bytes(self._buffer[: self._buffer.index(b":")])
        if not head.isdigit():
            raise DisetProtocolError(f"{self.where}: bad message length {head!r}")
        size = int(head)
        if size > self.max_message:
            raise DisetProtocolError(f"{self.where}: message of {size} bytes is over the limit")
        del self._buffer[: len(head) + 1]
        while len(self._buffer) < size:
            self._recv(f"the rest of a {size}-byte message (got {len(self._buffer)})")
        payload = bytes(self._buffer[:size])
        del self._buffer[:size]
        return decode(payload)

    def _recv(self, waiting_for: str) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except TimeoutError as exc:
            raise DisetUnreachable(f"{self.where}: timed out waiting for {waiting_for}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise DisetUnreachable(f"{self.where}: receiving {waiting_for} failed: {exc}") from exc
        if not data:
            raise DisetUnreachable(
                f"{self.where}: connection closed while waiting for {waiting_for}"
            )
        self._buffer += data

    def _handle_keep_alive(self, message: Any) -> None:
        value = message.get("Value") if isinstance(message, dict) else None
        if not isinstance(value, dict) or "id" not in value or "kaping" not in value:
            raise DisetProtocolError(f"{self.where}: invalid keep-alive {message!r}")
        if value["kaping"]:
            self.send(s_ok({"id": value["id"], "kaping": False}), prefix=KEEP_ALIVE_MAGIC)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


def check_reply(reply: Any, what: str, method: str) -> Any:
    """``Value`` of an S_OK reply; DisetError (or DisetAuthError) for an S_ERROR."""
    if not isinstance(reply, dict) or "OK" not in reply:
        raise DisetProtocolError(f"{what}: not a DIRAC return structure: {reply!r:.200}")
    if reply["OK"]:
        return reply.get("Value")
    errno = reply.get("Errno") or 0
    message = f"{what}: {reply.get('Message', 'error without message')}"
    if errno == ENOAUTH:
        raise DisetAuthError(message, errno, method=method)
    raise DisetError(message, int(errno), method=method)


# --- the client -------------------------------------------------------------------------


class DisetClient:
    """Calls one DISET service: ``DisetClient("dips://host:9170/WorkloadManagement/Matcher",
    ctx).call("requestJob", {...})``. Thread-safe: each call has its own connection."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        timeout: float = 60.0,
        *,
        setup: str | None = None,
        vo: str | None = None,
        extra_credentials: str = "",
        connect_retries: int = 2,
        retry_delay: float = 1.0,
    ) -> None:
        self.url = url
        self.host, self.port, self.service = parse_url(url)
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.setup = setup
        self.vo = vo
        self.extra_credentials = extra_credentials  # "hosts" when calling with a host cert
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay

    def __repr__(self) -> str:
        return f"DisetClient({self.url!r})"

    # public API ----------------------------------------------------------------------

    def call_raw(self, method: str, *args: Any) -> dict[str, Any]:
        """The whole S_OK/S_ERROR reply of ``method(*args)`` (errors in it not raised)."""
        start = time.monotonic()
        with self._action("RPC", method) as chan:
            chan.send(s_ok(list(args)))
            reply = chan.receive()
        if not isinstance(reply, dict) or "OK" not in reply:
            raise DisetProtocolError(f"{self.service}.{method}: not a return structure")
        log.debug(
            "DISET %s.%s -> %s in %.3f s",
            self.service,
            method,
            "OK" if reply["OK"] else f"error {reply.get('Errno', 0)}",
            time.monotonic() - start,
        )
        return reply

    def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` on the service; its ``Value``, or DisetError with its Message."""
        return check_reply(self.call_raw(method, *args), f"{self.service}.{method}", method)

    def send_file(self, file_id: Any, source: Path | IO[bytes], token: str = "") -> Any:
        """Stream ``source`` to the service (FileTransfer/FromClient); the service's Value."""
        if isinstance(source, Path):
            with source.open("rb") as handle:
                return self.send_file(file_id, handle, token)
        size = _remaining_size(source)
        start = time.monotonic()
        with self._action("FileTransfer", "FromClient") as chan:
            self._transfer_header(chan, [file_id, token, size])
            sent = _stream_out(chan, source, self.service)
            result = check_reply(chan.receive(), f"{self.service} upload", "FromClient")
        log.debug(
            "DISET %s upload of %d bytes in %.3f s", self.service, sent, time.monotonic() - start
        )
        return result

    def receive_file(self, file_id: Any, sink: Path | IO[bytes], token: str = "CheckSum") -> int:
        """Stream a file from the service (FileTransfer/ToClient) into ``sink``; its size.

        A Path sink is removed again when the transfer fails.
        """
        if isinstance(sink, Path):
            try:
                with sink.open("wb") as handle:
                    return self.receive_file(file_id, handle, token)
            except BaseException:
                sink.unlink(missing_ok=True)
                raise
        start = time.monotonic()
        with self._action("FileTransfer", "ToClient") as chan:
            self._transfer_header(chan, [file_id, token])
            size = _stream_in(chan, sink, self.service, verify="NoCheckSum" not in token)
            check_reply(chan.receive(), f"{self.service} download", "ToClient")
        log.debug(
            "DISET %s download of %d bytes in %.3f s", self.service, size, time.monotonic() - start
        )
        return size

    # connection ----------------------------------------------------------------------

    @contextmanager
    def _action(self, kind: str, action: str) -> Iterator[Channel]:
        chan = self._connect()
        try:
            proposal = [[self.service, self.setup or "None", self.vo or "unknown"], [kind, action]]
            chan.send(s_ok([*proposal, self.extra_credentials, f"pilot-agent {__version__}"]))
            check_reply(chan.receive(), f"{self.service}: {kind}/{action} refused", action)
            yield chan
        finally:
            chan.close()

    def _transfer_header(self, chan: Channel, file_info: list[Any]) -> None:
        chan.send(s_ok(file_info))
        check_reply(chan.receive(), f"{self.service}: transfer refused", "FileTransfer")

    def _connect(self) -> Channel:
        where = f"{self.service} at {self.host}:{self.port}"
        for attempt in range(self.connect_retries + 1):
            try:
                return Channel(self._open_tls(), where)
            except DisetUnreachable as exc:
                if attempt >= self.connect_retries:
                    raise
                log.warning("%s; retrying in %.1f s", exc, self.retry_delay)
                time.sleep(self.retry_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_tls(self) -> ssl.SSLSocket:
        where = f"{self.service} at {self.host}:{self.port}"
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise DisetUnreachable(f"{where}: cannot connect: {exc}") from exc
        try:
            return self.ssl_context.wrap_socket(raw, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise DisetUnreachable(f"{where}: TLS handshake failed: {exc}") from exc


# --- file transfer loops ------------------------------------------------------------------


def _remaining_size(source: IO[bytes]) -> int:
    try:
        here = source.tell()
        end = source.seek(0, 2)
        source.seek(here)
        return end - here
    except (OSError, ValueError):
        return -1  # not seekable: DIRAC only uses the size for its upload limit


def _stream_out(chan: Channel, source: IO[bytes], service: str) -> int:
    """Send ``source`` chunk by chunk, each acknowledged; EOF with the MD5. Bytes sent."""
    digest = hashlib.md5(usedforsecurity=False)
    sent = 0
    while chunk := source.read(CHUNK_SIZE):
        digest.update(chunk)
        chan.send(s_ok([True, chunk]))
        ack = chan.receive()
        check_reply(ack, f"{service} upload", "FromClient")
        sent += len(chunk)
        if ack.get("AbortTransfer"):
            log.debug("%s already has this file: upload cut short after %d bytes", service, sent)
            return sent
    chan.send(s_ok([False, digest.hexdigest()]))
    return sent


def _stream_in(chan: Channel, sink: IO[bytes], service: str, verify: bool) -> int:
    """Receive chunks into ``sink`` until EOF; check the MD5. Bytes received."""
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    while True:
        message = chan.receive()
        if isinstance(message, dict) and message.get("AbortTransfer"):
            chan.send(s_ok())
            return size
        value = check_reply(message, f"{service} download", "ToClient")
        if not isinstance(value, list) or len(value) != 2:
            raise DisetProtocolError(f"{service} download: unexpected chunk {value!r:.100}")
        more, data = value
        if not more:
            if verify and data != digest.hexdigest():
                raise DisetError(f"{service} download: MD5 mismatch ({data} announced)")
            return size
        if isinstance(data, str):
            data = data.encode(errors="surrogateescape")
        sink.write(data)
        digest.update(data)
        size += len(data)
        chan.send(s_ok())
