"""DISET client and DiracBackend without DIRAC: encoding, framing, and a fake DISET
service over real TLS on 127.0.0.1 (our proxy as client certificate) for the error paths
that a real server rarely shows (truncated frames, bad lengths, closed connections)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from pilot.backends.base import JobStatus, MatchedJob, StatusUpdate
from pilot.backends.dirac.backend import DiracBackend, DiracSettings, settings_from_config
from pilot.backends.dirac.diset import (
    CHUNK_SIZE,
    Channel,
    DisetAuthError,
    DisetClient,
    DisetError,
    DisetProtocolError,
    DisetUnreachable,
    check_reply,
    decode,
    encode,
    frame,
    parse_url,
    s_ok,
)
from pilot.backends.factory import make_backend
from pilot.config import PilotConfig
from pilot.errors import (
    AuthError,
    CredentialError,
    ExitCode,
    PilotError,
    SandboxError,
    UsageError,
)
from pilot.grid import credentials
from pilot.grid.resolve import Credentials, resolve
from pilot.job import jdl
from testbed.dirac_server import harness
from testbed.dirac_server.certs import make_pki
from testbed.dirac_server.fixture import unavailable
from testbed.pki import LoopbackTlsServer

MATCHER = "WorkloadManagement/Matcher"

# --- encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [0, 1, True, False, None, -7, 2.5, "", "héllo ✓", [1, [2, {"a": None}]], {"k": {"n": [True]}}],
)
def test_json_values_round_trip_unchanged(value: Any) -> None:
    back = decode(encode(value))
    assert back == value and type(back) is type(value)  # True stays bool, 1 stays int


def test_tuples_become_lists_and_int_keys_strings_like_dirac() -> None:
    assert decode(encode({1: (2, 3)})) == {"1": [2, 3]}


def test_special_types_are_tagged_exactly_like_jencode() -> None:
    assert encode(datetime(2026, 11, 27, 5, 36, 46, 999)) == (
        b'{"__dCls": "dt", "obj": "2026-11-27 05:36:46"}'  # microseconds are dropped
    )
    assert encode(dt.date(2026, 1, 2)) == b'{"__dCls": "date", "obj": "2026-01-02"}'
    paris = dt.timezone(timedelta(hours=1))
    assert decode(encode(datetime(2026, 1, 1, 13, tzinfo=paris))) == datetime(2026, 1, 1, 12)
    assert encode(b"\x00\xff") == b'{"__dCls": "b64", "obj": "AP8="}'


def test_tagged_values_decode_to_python_types() -> None:
    payload = b'[{"__dCls": "dt", "obj": "2026-11-27 05:36:46"}, {"__dCls": "b64", "obj": "AP8="}]'
    assert decode(payload) == [datetime(2026, 11, 27, 5, 36, 46), b"\x00\xff"]
    assert decode(b'{"__dCls": "date", "obj": "2026-01-02"}') == dt.date(2026, 1, 2)


def test_unknown_dirac_object_stays_a_dict() -> None:
    raw = {"__dCls": "Operation", "__dMod": "DIRAC.RequestManagementSystem", "Type": "x"}
    assert decode(json.dumps(raw).encode()) == raw


def test_undecodable_payload_is_a_protocol_error() -> None:
    with pytest.raises(DisetProtocolError, match="undecodable"):
        decode(b"lsi3e")  # DIRAC's old DEncode: not spoken here


def test_unsendable_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="object"):
        encode(object())


_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes().map(lambda d: d.replace(microsecond=0))
)
_values = st.recursive(
    _leaves, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20
)


@given(_values)
def test_any_supported_value_round_trips(value: Any) -> None:
    assert decode(encode(value)) == value


def test_frame_is_length_colon_payload() -> None:
    assert frame({"OK": True, "Value": None}) == b'27:{"OK": true, "Value": null}'
    assert frame([1], prefix=b"dka") == b"dka3:[1]"


# --- framing over a socket pair ---------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Channel, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    yield Channel(ours, "test peer", max_message=1000), theirs
    ours.close()
    theirs.close()


def test_message_split_over_reads_and_two_in_one(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    data = frame(s_ok("first")) + frame(s_ok("second"))
    peer.sendall(data[:2])
    threading.Timer(0.05, peer.sendall, (data[2:],)).start()
    assert chan.receive() == s_ok("first")
    assert chan.receive() == s_ok("second")


def test_keep_alive_ping_is_answered_with_a_pong(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    peer.sendall(frame(s_ok({"id": "k1", "kaping": True}), b"dka") + frame(s_ok(42)))
    assert chan.receive() == s_ok(42)
    assert peer.recv(1000) == frame(s_ok({"id": "k1", "kaping": False}), b"dka")


def test_keep_alive_pong_is_swallowed(pair: tuple[Channel, socket.socket]) -> None:
    chan, peer = pair
    peer.sendall(frame(s_ok({"id": "k1", "kaping": False}), b"dka") + frame(s_ok(1)))
    assert chan.receive() == s_ok(1)


@pytest.mark.parametrize(
    ("wire", "error", "match"),
    [
        (b"12:" + b'{"OK": ', DisetUnreachable, r"got 7"),  # truncated, then closed
        (b"", DisetUnreachable, "connection closed"),
        (b"1x:{}", DisetProtocolError, "bad message length"),
        (b"-1:{}", DisetProtocolError, "bad message length"),
        (b"1234567890123456", DisetProtocolError, "no length header"),
        (b"5000:" + b"x" * 10, DisetProtocolError, "over the limit"),
        (b"3:abc", DisetProtocolError, "undecodable"),
        (b"dka" + frame(s_ok("no id")), DisetProtocolError, "invalid keep-alive"),
    ],
)
def test_malformed_or_cut_input(
    pair: tuple[Channel, socket.socket], wire: bytes, error: type[Exception], match: str
) -> None:
    chan, peer = pair
    peer.sendall(wire)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(error, match=match):
        chan.receive()


def test_silent_peer_times_out(pair: tuple[Channel, socket.socket]) -> None:
    chan, _ = pair
    chan.sock.settimeout(0.2)
    with pytest.raises(DisetUnreachable, match="timed out"):
        chan.receive()


def test_reply_errors_carry_dirac_errno() -> None:
    with pytest.raises(DisetError) as info:
        check_reply({"OK": False, "Errno": 1510, "Message": "No match found"}, "Matcher", "m")
    assert info.value.errno == 1510 and "No match found" in str(info.value)
    with pytest.raises(DisetAuthError) as auth:
        check_reply({"OK": False, "Errno": 1111, "Message": "Unauthorized query"}, "X", "m")
    assert isinstance(auth.value, AuthError) and auth.value.exit_code is ExitCode.AUTH
    with pytest.raises(DisetProtocolError):
        check_reply(["OK"], "X", "m")
    assert DisetUnreachable("x").exit_code is ExitCode.SERVER_UNREACHABLE


def test_service_urls() -> None:
    assert parse_url("dips://h.example:9170/WorkloadManagement/Matcher") == (
        "h.example",
        9170,
        MATCHER,
    )
    for bad in ("https://h:1/A/B", "dips://h/A/B", "dips://h:1/Matcher", "dips://h:1/A/B/C"):
        with pytest.raises(ValueError, match="not a DISET service URL"):
            parse_url(bad)


# --- a fake DISET service over TLS ---------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext  # user certificate
    proxy: Path  # RFC 3820 proxy of the user
    ca_dir: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    root = tmp_path_factory.mktemp("pki")
    make_pki(root)
    ca_dir = root / "certificates"
    server = credentials.server_ssl_context(root / "hostcert.pem", root / "hostkey.pem", ca_dir)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(root / "user" / "usercert.pem", root / "user" / "userkey.pem")
    client.load_verify_locations(capath=ca_dir)
    cert = x509.load_pem_x509_certificate((root / "user" / "usercert.pem").read_bytes())
    key = serialization.load_pem_private_key((root / "user" / "userkey.pem").read_bytes(), None)
    proxy = root / "x509up"
    pem = credentials.make_proxy((cert, key, ()), timedelta(hours=1))  # type: ignore[arg-type]
    proxy.write_bytes(pem)
    proxy.chmod(0o600)
    return Tls(server, client, proxy, ca_dir)


Handler = Callable[[Channel], None]


class FakeDiset(LoopbackTlsServer):
    """Runs ``handler`` on each TLS connection; ``before_tls(n)`` may take the raw n-th
    connection (returns True when it did)."""

    connection_timeout = 5.0

    def __init__(
        self, ctx: ssl.SSLContext, handler: Handler, before_tls: Callable[[int], bool] | None = None
    ) -> None:
        super().__init__(ctx)
        self.handler, self.before_tls = handler, before_tls
        self.peers: list[dict[str, Any]] = []

    def url(self, service: str = MATCHER) -> str:
        return f"dips://localhost:{self.port}/{service}"

    def serve_one(self, conn: socket.socket) -> None:
        if self.before_tls and self.before_tls(self.connections):
            return
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            self.peers.append(tls.getpeercert() or {})
            self.handler(Channel(tls, "fake server", max_message=1 << 30))


def accept_proposal(chan: Channel, seen: list[Any]) -> list[Any]:
    proposal = chan.receive()["Value"]
    seen.append(proposal)
    chan.send(s_ok())
    return proposal  # type: ignore[no-any-return]


def client(tls: Tls, server: FakeDiset, **kwargs: Any) -> DisetClient:
    kwargs.setdefault("connect_retries", 0)
    return DisetClient(server.url(), tls.client, kwargs.pop("timeout", 5.0), **kwargs)


def test_rpc_over_tls_with_an_rfc3820_proxy(tls: Tls) -> None:
    seen: list[Any] = []

    def serve(chan: Channel) -> None:
        accept_proposal(chan, seen)
        seen.append(chan.receive()["Value"])
        chan.send(s_ok({"JobID": 5, "when": datetime(2026, 1, 1)}))

    settings = DiracSettings(
        matcher_url="dips://localhost:1/A/B",
        job_state_update_url="dips://localhost:1/A/B",
        sandbox_store_url="dips://localhost:1/A/B",
        proxy=tls.proxy,
        ca_dir=tls.ca_dir,
    )
    ctx = credentials.ssl_context(credentials.load_proxy(settings.proxy), settings.ca_dir)
    with FakeDiset(tls.server, serve) as server:
        result = DisetClient(server.url(), ctx, vo="testvo").call(
            "requestJob", {"Site": "S"}, (1, 2)
        )
    assert not server.errors
    assert result == {"JobID": 5, "when": datetime(2026, 1, 1)}
    proposal, args = seen
    assert proposal[:3] == [[MATCHER, "None", "testvo"], ["RPC", "requestJob"], ""]
    assert proposal[3].startswith("pilot-agent ")
    assert args == [{"Site": "S"}, [1, 2]]
    subject = [rdn[0][1] for rdn in server.peers[0]["subject"]]
    assert subject[:3] == ["DIRACTest", "users", "testuser"] and subject[3].isdigit()  # proxy


def test_error_reply_raises_with_message_and_errno(tls: Tls) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.send({"OK": False, "Errno": 1510, "Message": "No match found ( 1510 : )"})

    with FakeDiset(tls.server, serve) as server, pytest.raises(DisetError) as info:
        client(tls, server).call("requestJob", {})
    assert info.value.errno == 1510 and info.value.method == "requestJob"


def test_refused_proposal_is_an_auth_error(tls: Tls) -> None:
    def serve(chan: Channel) -> None:
        chan.receive()
        chan.send({"OK": False, "Errno": 1111, "Message": "Unauthorized query"})

    with (
        FakeDiset(tls.server, serve) as server,
        pytest.raises(DisetAuthError, match="Unauthorized"),
    ):
        client(tls, server).call("getPilotInfo", "ref")


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        (b"", DisetUnreachable, "connection closed"),
        (b'40:{"OK": true', DisetUnreachable, "got 11"),
        (b"4x:{}", DisetProtocolError, "bad message length"),
        (b"2:[]", DisetProtocolError, "not a return structure"),
    ],
)
def test_broken_replies(tls: Tls, reply: bytes, error: type[Exception], match: str) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.sock.sendall(reply)

    with FakeDiset(tls.server, serve) as server, pytest.raises(error, match=match):
        client(tls, server).call("m")


def test_server_closing_after_the_handshake(tls: Tls) -> None:
    with FakeDiset(tls.server, lambda chan: None) as server, pytest.raises(DisetUnreachable):
        client(tls, server).call("m")


def test_failed_connection_is_retried(tls: Tls) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.send(s_ok("third time lucky"))

    drop_two = lambda n: n <= 2  # noqa: E731 (closed before the TLS handshake)
    with FakeDiset(tls.server, serve, before_tls=drop_two) as server:
        answer = client(tls, server, connect_retries=2, retry_delay=0.01).call("m")
    assert answer == "third time lucky" and server.connections == 3


def test_refused_port_and_untrusted_server(tls: Tls, tmp_path: Path) -> None:
    port = socket.create_server(("127.0.0.1", 0))
    url = f"dips://localhost:{port.getsockname()[1]}/{MATCHER}"
    port.close()
    with pytest.raises(DisetUnreachable, match="cannot connect"):
        DisetClient(url, tls.client, 5, connect_retries=0).call("m")
    other = tmp_path / "other"
    make_pki(other)
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.load_verify_locations(capath=other / "certificates")
    with (
        FakeDiset(tls.server, lambda chan: None) as server,
        pytest.raises(DisetUnreachable) as info,
    ):
        DisetClient(server.url(), stranger, 5, connect_retries=0).call("m")
    assert "certificate verify failed" in str(info.value)


def test_silent_server_times_out_within_bound(tls: Tls) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        time.sleep(2.0)

    with FakeDiset(tls.server, serve) as server:
        start = time.monotonic()
        with pytest.raises(DisetUnreachable, match="timed out"):
            client(tls, server, timeout=0.5).call("m")
        assert time.monotonic() - start < 0.5 + 1.0


def test_keep_alive_during_a_call(tls: Tls) -> None:
    pongs: list[Any] = []

    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.send(s_ok({"id": "ka7", "kaping": True}), prefix=b"dka")
        head = chan.sock.recv(3)
        pongs.append((head, chan.receive()))
        chan.send(s_ok("done"))

    with FakeDiset(tls.server, serve) as server:
        assert client(tls, server).call("m") == "done"
    assert pongs == [(b"dka", s_ok({"id": "ka7", "kaping": False}))]


# --- file transfers ---------------------------------------------------------------------


BIG = os.urandom(2 * CHUNK_SIZE + 12345)


def send_chunks(chan: Channel, data: bytes, seen: list[Any], eof_md5: str | None = None) -> None:
    """The server side of ToClient once the file header is read."""
    chan.send(s_ok("Accepted"))
    for start in range(0, len(data), CHUNK_SIZE):
        chan.send(s_ok([True, data[start : start + CHUNK_SIZE]]))
        seen.append(chan.receive())
    chan.send(s_ok([False, eof_md5 or hashlib.md5(data).hexdigest()]))
    chan.send(s_ok())


def stream_to_client(data: bytes, seen: list[Any], eof_md5: str | None = None) -> Handler:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, seen)
        seen.append(chan.receive()["Value"])
        send_chunks(chan, data, seen, eof_md5)

    return serve


def test_receive_file_streams_chunks_and_checks_md5(tls: Tls, tmp_path: Path) -> None:
    seen: list[Any] = []
    dest = tmp_path / "sb.tar.bz2"
    with FakeDiset(tls.server, stream_to_client(BIG, seen)) as server:
        size = client(tls, server).receive_file("dips://x/WMS/SandboxStore/SandBox/a.tar", dest)
    assert not server.errors
    assert size == len(BIG) and dest.read_bytes() == BIG
    proposal, header, *acks = seen
    assert proposal[1] == ["FileTransfer", "ToClient"]
    assert header == ["dips://x/WMS/SandboxStore/SandBox/a.tar", "CheckSum"]
    assert acks == [s_ok()] * 3


def test_receive_file_md5_mismatch_leaves_no_file(tls: Tls, tmp_path: Path) -> None:
    dest = tmp_path / "sb.tar"
    serve = stream_to_client(b"abc", [], eof_md5="0" * 32)
    with FakeDiset(tls.server, serve) as server, pytest.raises(DisetError, match="MD5 mismatch"):
        client(tls, server).receive_file("f", dest)
    assert not dest.exists()


def test_receive_file_error_mid_stream(tls: Tls, tmp_path: Path) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.send(s_ok("Accepted"))
        chan.send(s_ok([True, b"part"]))
        chan.receive()
        chan.send({"OK": False, "Message": "Sandbox does not exist"})

    dest = tmp_path / "sb.tar"
    with FakeDiset(tls.server, serve) as server, pytest.raises(DisetError, match="does not exist"):
        client(tls, server).receive_file("f", dest)
    assert not dest.exists()


@dataclass
class Upload:
    abort_after: int | None = None
    header: list[Any] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    eof: list[Any] = field(default_factory=list)
    after_final: list[bytes] = field(default_factory=list)

    def __call__(self, chan: Channel) -> None:
        accept_proposal(chan, [])
        self.receive(chan, chan.receive()["Value"])

    def receive(self, chan: Channel, header: list[Any]) -> None:
        """The server side of FromClient once the file header is read."""
        self.header = header
        chan.send(s_ok("Accepted"))
        while True:
            more, data = chan.receive()["Value"]
            if not more:
                self.eof.append(data)
                break
            self.chunks.append(data)
            if self.abort_after == len(self.chunks):
                chan.send({"OK": True, "Value": None, "AbortTransfer": True})
                break
            chan.send(s_ok())
        chan.send(s_ok("SB:SandboxSE|/SandBox/x.tar.gz"))
        self.after_final.append(chan.sock.recv(10))  # b"": the client closed


def test_send_file_streams_chunks_with_md5(tls: Tls, tmp_path: Path) -> None:
    source = tmp_path / "out.tar.gz"
    source.write_bytes(BIG)
    upload = Upload()
    file_id = ["0123.tar.gz", {"Job:7": "Output"}]
    with FakeDiset(tls.server, upload) as server:
        assert client(tls, server).send_file(file_id, source) == "SB:SandboxSE|/SandBox/x.tar.gz"
    assert not server.errors
    assert upload.header == [file_id, "", len(BIG)]
    assert [len(c) for c in upload.chunks] == [CHUNK_SIZE, CHUNK_SIZE, 12345]
    assert b"".join(upload.chunks) == BIG
    assert upload.eof == [hashlib.md5(BIG).hexdigest()] and upload.after_final == [b""]


def test_send_file_stops_when_the_server_has_the_file(tls: Tls, tmp_path: Path) -> None:
    source = tmp_path / "out.tar.gz"
    source.write_bytes(BIG)
    upload = Upload(abort_after=1)
    with FakeDiset(tls.server, upload) as server:
        assert client(tls, server).send_file(["h.tar.gz", {}], source).startswith("SB:")
    assert not server.errors
    assert len(upload.chunks) == 1 and upload.eof == [] and upload.after_final == [b""]


def test_refused_transfer(tls: Tls, tmp_path: Path) -> None:
    def serve(chan: Channel) -> None:
        accept_proposal(chan, [])
        chan.receive()
        chan.send({"OK": False, "Message": "Service can't transfer files toClient"})

    with FakeDiset(tls.server, serve) as server, pytest.raises(DisetError, match="can't transfer"):
        client(tls, server).receive_file("f", tmp_path / "x")


# --- DiracBackend over the fake service ----------------------------------------------------


class FakeWms:
    """One fake service answering every WMS method the backend uses, and sandboxes."""

    def __init__(self, replies: dict[str, Any] | None = None) -> None:
        self.replies = replies or {}
        self.calls: list[tuple[str, str, list[Any]]] = []
        self.files: dict[str, bytes] = {}
        self.uploads: list[Upload] = []

    def __call__(self, chan: Channel) -> None:
        (service, _, _), (kind, action), *_ = accept_proposal(chan, [])
        args = chan.receive()["Value"]
        self.calls.append((service, action, args))
        if kind == "RPC":
            reply = self.replies.get(action, s_ok())
            chan.send(reply)
        elif action == "ToClient" and args[0] in self.files:
            send_chunks(chan, self.files[args[0]], [])
        elif action == "ToClient":
            chan.send({"OK": False, "Message": "Sandbox does not exist"})
        else:
            upload = Upload()
            self.uploads.append(upload)  # complete before the final reply goes out
            upload.receive(chan, args)


def fake_settings(tls: Tls, server: FakeDiset, **extra: Any) -> DiracSettings:
    """The backend's settings for the WorkloadManagement services of ``server``."""
    return DiracSettings(
        matcher_url=server.url("WorkloadManagement/Matcher"),
        job_state_update_url=server.url("WorkloadManagement/JobStateUpdate"),
        sandbox_store_url=server.url("WorkloadManagement/SandboxStore"),
        proxy=tls.proxy,
        ca_dir=tls.ca_dir,
        timeout=5,
        **extra,
    )


@pytest.fixture
def wms(tls: Tls) -> Iterator[tuple[FakeWms, FakeDiset, DiracBackend]]:
    fake = FakeWms()
    with FakeDiset(tls.server, fake) as server:
        settings = fake_settings(
            tls,
            server,
            pilot_manager_url=server.url("WorkloadManagement/PilotManager"),
            vo="testvo",
        )
        yield fake, server, DiracBackend(settings, ssl_context=tls.client)
        assert not server.errors


JOB = MatchedJob(
    "7", '[Executable = "x"; InputSandbox = {"a.txt", "SB:SandboxSE|/SandBox/t/abc.tar.bz2"};]'
)


def test_match_maps_the_matcher_reply(wms: tuple[FakeWms, FakeDiset, DiracBackend]) -> None:
    fake, _, backend = wms
    reply = {"JobID": 7, "JDL": "[]", "Owner": "u", "Group": "g", "PilotInfoReportedFlag": True}
    fake.replies["requestJob"] = s_ok(reply)
    job = backend.match({"Site": "S", "Tag": ("b", "a"), "Missing": None})
    assert job is not None and (job.job_id, job.jdl) == ("7", "[]")
    assert dict(job.extra) == {"Owner": "u", "Group": "g", "PilotInfoReportedFlag": True}
    backend.match({"Site": "S"})
    first, second = (args[0] for _, _, args in fake.calls)
    assert first == {"Site": "S", "Tag": ["b", "a"], "VirtualOrganization": "testvo"}
    assert second["PilotInfoReportedFlag"] is True


@pytest.mark.parametrize(
    "reply",
    [
        {"OK": False, "Errno": 1510, "Message": "No match found ( 1510 : )"},
        {"OK": False, "Message": "No match found"},
    ],
)
def test_no_match_is_none(wms: tuple[FakeWms, FakeDiset, DiracBackend], reply: Any) -> None:
    fake, _, backend = wms
    fake.replies["requestJob"] = reply
    assert backend.match({"Site": "S"}) is None


def test_pilot_version_mismatch_is_an_error(wms: tuple[FakeWms, FakeDiset, DiracBackend]) -> None:
    fake, _, backend = wms
    fake.replies["requestJob"] = {
        "OK": False,
        "Errno": 1511,
        "Message": "Pilot version does not match",
    }
    with pytest.raises(DisetError, match="Pilot version") as info:
        backend.match({"Site": "S"})
    assert info.value.errno == 1511


def test_status_updates(wms: tuple[FakeWms, FakeDiset, DiracBackend]) -> None:
    fake, _, backend = wms
    fake.replies["setJobParameters"] = {"OK": False, "Message": "OpenSearch down"}
    when = datetime(2026, 11, 27, 5, 6, 7, 890000, tzinfo=UTC).timestamp()
    backend.set_status(JOB, StatusUpdate(JobStatus.RUNNING, "Application", "Go", when))
    backend.set_status(JOB, StatusUpdate(application="50%"))
    backend.set_status(JOB, StatusUpdate(JobStatus.DONE, extra={"Timing": {"run": 1.5}}))
    bulk, app, done, params = fake.calls
    assert bulk[1:] == (
        "setJobStatusBulk",
        [7, {"2026-11-27 05:06:07.890000": {
            "Status": "Running", "MinorStatus": "Application", "ApplicationStatus": "Go",
            "Source": "JobAgent"}}],
    )  # fmt: skip
    assert app[1:] == ("setJobApplicationStatus", [7, "50%", "JobAgent"])
    (stamp,) = done[2][1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", stamp)
    assert done[2][1][stamp] == {"Status": "Done", "Source": "JobAgent"}
    assert params[1:] == ("setJobParameters", [7, [["Timing.run", "1.5"]]])  # failure only logged


def test_a_retried_final_status_is_spaced_and_then_its_job_forgotten(
    wms: tuple[FakeWms, FakeDiset, DiracBackend],
) -> None:
    """The per-job time of the last status sent (kept so that a job's statuses reach
    DIRAC at least 1 ms apart) stays while a final status has not landed: its retry is
    still later than the status before it; once it lands, the job's entry goes."""
    fake, _, backend = wms
    start = int(time.time() * 1000) / 1000 + 0.0006
    backend.set_status(JOB, StatusUpdate(JobStatus.COMPLETING, "Uploading", timestamp=start))
    done = StatusUpdate(JobStatus.DONE, "Execution Complete", timestamp=start + 0.0002)
    fake.replies["setJobStatusBulk"] = {"OK": False, "Message": "database busy"}
    with pytest.raises(DisetError, match="database busy"):
        backend.set_status(JOB, done)
    assert JOB.job_id in backend._last_ms  # the failed final status keeps the job's time
    del fake.replies["setJobStatusBulk"]
    backend.set_status(JOB, done)  # the outbox's retry: the same update
    assert backend._last_ms == {}
    stamps = [next(iter(args[1])) for _, action, args in fake.calls if action == "setJobStatusBulk"]
    assert len(stamps) == 3 and stamps[0] < stamps[1] < stamps[2], stamps


def test_the_status_times_table_does_not_grow_over_many_jobs(
    wms: tuple[FakeWms, FakeDiset, DiracBackend],
) -> None:
    """One entry per job while it runs, none once its final status has gone: a pilot
    that runs thousands of jobs keeps no time of any ended one."""
    _, _, backend = wms
    sent: list[tuple[Any, ...]] = []

    class JobState:
        def call(self, *args: Any) -> None:
            sent.append(args)

    backend.job_state = JobState()  # type: ignore[assignment]
    ends = [JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED]
    for n in range(3000):
        job = MatchedJob(str(n), "[]")
        backend.set_status(job, StatusUpdate(JobStatus.RUNNING, "Application"))
        backend.set_status(job, StatusUpdate(application="half way"))
        assert list(backend._last_ms) == [str(n)]
        backend.set_status(job, StatusUpdate(ends[n % 3], "Ended"))
        assert backend._last_ms == {}
    assert len(sent) == 3 * 3000


def test_heartbeat_returns_commands(wms: tuple[FakeWms, FakeDiset, DiracBackend]) -> None:
    fake, _, backend = wms
    fake.replies["sendHeartBeat"] = s_ok({"Kill": ""})
    assert backend.heartbeat(JOB, {"CPUConsumed": 1.0, "Disk": {"a": 1}, "None": None}) == ("Kill",)
    assert fake.calls[0][2] == [7, {"CPUConsumed": 1.0, "Disk": '{"a": 1}'}, {}]


def test_input_sandbox_download(
    wms: tuple[FakeWms, FakeDiset, DiracBackend], tmp_path: Path
) -> None:
    fake, _, backend = wms
    fake.files[f"{backend.sandbox_store.url}/SandBox/t/abc.tar.bz2"] = b"tarball"
    inputs = jdl.load(JOB.jdl).inputs
    assert backend.fetch_input_sandbox(JOB, inputs, tmp_path) == [tmp_path / "abc.tar.bz2"]
    assert (tmp_path / "abc.tar.bz2").read_bytes() == b"tarball"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.tar.bz2"]


def test_a_jobs_sandboxes_are_fetched_and_stored_as_its_owner(
    tls: Tls, wms: tuple[FakeWms, FakeDiset, DiracBackend], tmp_path: Path
) -> None:
    """With the owner's delegated proxy handed over (use_owner_proxy), that job's sandbox
    calls present the owner's proxy, not the pilot's credential; other jobs, and the job
    once it is over, use the pilot's again."""
    fake, server, backend = wms
    root = tls.ca_dir.parent  # the test PKI also holds a second user, "otheruser"
    cert = x509.load_pem_x509_certificate((root / "other" / "usercert.pem").read_bytes())
    key = serialization.load_pem_private_key((root / "other" / "userkey.pem").read_bytes(), None)
    pem = credentials.make_proxy((cert, key, ()), timedelta(hours=1))  # type: ignore[arg-type]
    credentials.write_proxy(tmp_path / "owner", pem)
    owner = credentials.load_proxy(tmp_path / "owner")
    fake.files[f"{backend.sandbox_store.url}/SandBox/t/abc.tar.bz2"] = b"tarball"
    inputs = jdl.load(JOB.jdl).inputs

    def fetch_as(job: MatchedJob) -> str:
        dest = tmp_path / f"in-{len(server.peers)}"
        dest.mkdir()
        backend.fetch_input_sandbox(job, inputs, dest)
        return [rdn[0][1] for rdn in server.peers[-1]["subject"]][2]

    other_job = MatchedJob("8", JOB.jdl)
    backend.use_owner_proxy(JOB, owner)
    assert fetch_as(JOB) == "otheruser"
    archive = tmp_path / "output-sandbox.tar.gz"
    archive.write_bytes(b"gzipped tar")
    backend.store_output_sandbox(JOB, archive)
    assert len(fake.uploads) == 1
    assert [rdn[0][1] for rdn in server.peers[-1]["subject"]][2] == "otheruser"
    assert fetch_as(other_job) == "testuser"  # the pilot's credential in this fixture
    backend.use_owner_proxy(JOB, None)
    assert fetch_as(JOB) == "testuser"


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ('"LFN:/vo/file", "SB:SE|/SandBox/gone.tar"', "does not exist"),  # LFN: not here
        ('"SB:SE"', "malformed sandbox location"),
        ('"SB:SE|/SandBox/.."', "refusing sandbox file name"),
        ('"SB:SE|/SandBox/gone.tar"', "does not exist"),
    ],
)
def test_input_sandbox_refusals(
    wms: tuple[FakeWms, FakeDiset, DiracBackend], tmp_path: Path, entries: str, match: str
) -> None:
    backend = wms[2]
    job = MatchedJob("8", f'[Executable = "x"; InputSandbox = {{{entries}}};]')
    with pytest.raises(SandboxError, match=match):
        backend.fetch_input_sandbox(job, jdl.load(job.jdl).inputs, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_lfn_needs_a_catalogue_configured(
    wms: tuple[FakeWms, FakeDiset, DiracBackend], tmp_path: Path
) -> None:
    backend = wms[2]
    with pytest.raises(SandboxError, match=r"needs \[dirac\] filecatalog"):
        backend.fetch_lfn(JOB, "LFN:/vo/file", tmp_path / "file")
    assert list(tmp_path.iterdir()) == []


def test_output_data_goes_to_the_first_output_se_that_works_without_reparsing(
    wms: tuple[FakeWms, FakeDiset, DiracBackend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job's OutputSE comes with the call: the backend does not parse the JDL again."""
    from pilot.backends.dirac import data

    _, _, backend = wms
    tried: list[str] = []

    class Manager:
        def upload(self, source: Path, lfn: str, se_name: str) -> None:
            tried.append(se_name)
            if se_name == "SE-DOWN":
                raise data.DataError(f"{lfn}: {se_name} unreachable")

    def no_parse(text: str) -> None:
        raise AssertionError("the JDL was parsed again")

    monkeypatch.setattr(backend, "data_manager", lambda job=None: Manager())
    monkeypatch.setattr(jdl, "load", no_parse)
    source = tmp_path / "result.txt"
    source.write_text("r")
    backend.store_lfn(JOB, "LFN:/testvo/r.txt", source, "SE-DOWN, SE-UP")
    assert tried == ["SE-DOWN", "SE-UP"]
    with pytest.raises(data.DataError, match="no OutputSE"):
        backend.store_lfn(JOB, "LFN:/testvo/r.txt", source)


def test_output_sandbox_upload(
    wms: tuple[FakeWms, FakeDiset, DiracBackend], tmp_path: Path
) -> None:
    fake, _, backend = wms
    archive = tmp_path / "output-sandbox.tar.gz"
    archive.write_bytes(b"gzipped tar")
    backend.store_output_sandbox(JOB, archive)
    md5 = hashlib.md5(b"gzipped tar").hexdigest()
    (upload,) = fake.uploads
    assert upload.header == [[f"{md5}.tar.gz", {"Job:7": "Output"}], "", 11]
    assert upload.chunks == [b"gzipped tar"] and upload.eof == [md5]
    (tmp_path / "output.zip").write_bytes(b"zip")
    with pytest.raises(SandboxError, match=r"not a \.tar"):
        backend.store_output_sandbox(JOB, tmp_path / "output.zip")


def test_register_reports_to_the_pilot_manager(
    wms: tuple[FakeWms, FakeDiset, DiracBackend],
) -> None:
    fake, _, backend = wms
    fake.replies["setPilotStatus"] = {"OK": False, "Errno": 1111, "Message": "Unauthorized query"}
    info = {"site": "S", "ce": "ce.example", "resources": {"PilotReference": "ref", "CEQueue": "q"}}
    backend.register("stamp", info)  # refused: logged, not raised
    (call,) = fake.calls
    assert call[1:] == ("setPilotStatus", ["ref", "Running", "ce.example", call[2][3], "S", "q"])
    backend.upload_pilot_log("stamp", "log text")  # no DISET service for pilot logs
    backend.close()
    assert len(fake.calls) == 1


# --- settings ------------------------------------------------------------------------------


def test_settings_from_config(tmp_path: Path) -> None:
    proxy, ca_dir = tmp_path / "x509up", tmp_path / "certificates"
    cfg = PilotConfig(
        server="dips://wms.example",
        vo="vo",
        dirac={
            "SandboxStore": "dips://sb.example:1234/WorkloadManagement/SandboxStore",
            "timeout": 9,
        },
    )
    creds = Credentials(proxy_path=proxy, ca_dir=ca_dir)
    settings = settings_from_config(cfg, creds)
    assert settings.matcher_url == "dips://wms.example:9170/WorkloadManagement/Matcher"
    assert (
        settings.job_state_update_url == "dips://wms.example:9136/WorkloadManagement/JobStateUpdate"
    )
    assert settings.sandbox_store_url == "dips://sb.example:1234/WorkloadManagement/SandboxStore"
    assert (settings.proxy, settings.ca_dir, settings.vo, settings.timeout) == (
        proxy,
        ca_dir,
        "vo",
        9.0,
    )
    matcher = "dips://m.example:1/WorkloadManagement/Matcher"
    explicit = PilotConfig(server=matcher)
    assert settings_from_config(explicit, creds).matcher_url == matcher
    bundle = Credentials(proxy_path=proxy, ca_file=tmp_path / "ca.pem")
    only_file = settings_from_config(explicit, bundle)
    assert (only_file.ca_dir, only_file.ca_file) == (None, tmp_path / "ca.pem")


def test_settings_errors(tmp_path: Path) -> None:
    creds = Credentials(proxy_path=tmp_path / "x509up", ca_dir=tmp_path)
    with pytest.raises(UsageError, match="dips://"):
        settings_from_config(PilotConfig(server="https://stub.example"), creds)
    with pytest.raises(CredentialError, match="proxy"):
        settings_from_config(PilotConfig(server="dips://h"), Credentials(ca_dir=tmp_path))
    no_ca = Credentials(proxy_path=tmp_path / "x509up")
    with pytest.raises(CredentialError, match="--ca-file"):
        settings_from_config(PilotConfig(server="dips://h"), no_ca)
    with pytest.raises(UsageError, match="job_state_update_url"):
        DiracSettings(
            matcher_url="dips://h:1/A/B",
            job_state_update_url="http://h/x",
            sandbox_store_url="dips://h:1/A/B",
            proxy=tmp_path,
            ca_dir=tmp_path,
        )


def test_proxy_manager_without_configuration_server_stops_the_pilot(tmp_path: Path) -> None:
    """Without the Registry no owner DN is known, so every job would fail its delegation:
    refused at start-up instead of failing each job the pilot matches."""
    creds = Credentials(proxy_path=tmp_path / "x509up", ca_dir=tmp_path)
    pm = "dips://wms.example:9152/Framework/ProxyManager"
    with pytest.raises(UsageError, match="proxymanager needs"):
        settings_from_config(PilotConfig(server="dips://h", dirac={"proxymanager": pm}), creds)
    both = {"proxy_manager": pm, "configuration": "dips://cs.example:9135/Configuration/Server"}
    settings = settings_from_config(PilotConfig(server="dips://h", dirac=both), creds)
    assert settings.proxy_manager_url == pm


def test_ca_file_alone_verifies_the_dirac_server(tls: Tls, tmp_path: Path) -> None:
    """--ca-file (a CA bundle, no hash directory) is what the DIRAC backend trusts."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(b"".join(p.read_bytes() for p in sorted(tls.ca_dir.glob("*.0"))))
    fake = FakeWms({"requestJob": s_ok({"JobID": 9, "JDL": "[]", "Owner": "u", "Group": "g"})})
    with FakeDiset(tls.server, fake) as server:
        cfg = PilotConfig(server=server.url(), dirac={"timeout": 5})
        creds = resolve(tls.proxy, ca_file=bundle, env={})
        assert creds.ca_dir is None and creds.ca_file == bundle
        backend = make_backend(cfg, creds)
        try:
            job = backend.match({"Site": "S"})
        finally:
            backend.close()
    assert job is not None and job.job_id == "9"
    assert not server.errors
    subject = [rdn[0][1] for rdn in server.peers[0]["subject"]]
    assert subject[:3] == ["DIRACTest", "users", "testuser"]  # the proxy was the client cert
    make_pki(tmp_path / "other")
    untrusted = tmp_path / "other-ca.pem"
    untrusted.write_bytes(b"".join(p.read_bytes() for p in (tmp_path / "other").glob("*/*.0")))
    with FakeDiset(tls.server, fake) as server:
        cfg = PilotConfig(server=server.url(), dirac={"timeout": 5})
        backend = make_backend(cfg, resolve(tls.proxy, ca_file=untrusted, env={}))
        try:
            with pytest.raises(PilotError, match="certificate verify failed"):
                backend.match({"Site": "S"})
        finally:
            backend.close()


# --- the real-server harness: what happens where it cannot run ------------------------------


def test_harness_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda tool, path=None: None)
    with pytest.raises(
        harness.SetupError, match=r"needs mariadbd \(Debian package mariadb-server\)"
    ):
        harness.check_tools()


def test_unavailable_server_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs a local DIRAC server: no mariadb"):
        unavailable("no mariadb")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs a local DIRAC server: no mariadb"):
        unavailable("no mariadb")


# --- payload proxies through the ProxyManager (fake) ---------------------------------------


@pytest.mark.parametrize("reply", ["\u20ac", None, {"a": 1}, 1 << 40, b"junk"])
def test_configuration_that_is_not_compressed_bytes_is_a_cfg_error(reply: Any) -> None:
    from pilot.backends.dirac import cscfg

    with pytest.raises(cscfg.CfgError):
        cscfg.from_compressed(reply)


CS_TEXT = "Registry\n{\n  Users\n  {\n    u\n    {\n      DN = /O=DIRACTest/CN=u\n    }\n  }\n}\n"


@pytest.mark.parametrize(
    ("reply", "status", "minor"),
    [
        (
            {"OK": False, "Errno": 1111, "Message": "Unauthorized query"},
            JobStatus.FAILED,
            "Failed to get payload proxy: Framework/ProxyManager.getProxy: Unauthorized query",
        ),
        (
            {"OK": False, "Message": 'Cannot generate proxy: No proxy providers found for "x"'},
            JobStatus.DONE,
            "Execution Complete",
        ),
    ],
)
def test_proxy_manager_refusal_fails_only_that_job(
    tls: Tls, tmp_path: Path, reply: Any, status: JobStatus, minor: str
) -> None:
    """A refusal fails the job with a clear minor status (the runner returns, the pilot
    goes on); no stored proxy lets the job run without one."""
    import zlib

    from pilot.job import jobrun

    fake = FakeWms({"getCompressedData": s_ok(zlib.compress(CS_TEXT.encode())), "getProxy": reply})
    with FakeDiset(tls.server, fake) as server:
        settings = fake_settings(
            tls,
            server,
            proxy_manager_url=server.url("Framework/ProxyManager"),
            configuration_url=server.url("Configuration/Server"),
        )
        backend = DiracBackend(settings, ssl_context=tls.client)
        job = MatchedJob("9", '[Executable = "/bin/true";]', extra={"Owner": "u", "Group": "g"})
        runner = jobrun.JobRunner(
            backend, job, jobrun.JobSettings(work_dir=tmp_path, pilot_reference="p", site="S"), 1
        )
        outcome = runner.run()
        assert not server.errors
    assert (outcome.status, outcome.minor) == (status, minor)
    (get_proxy,) = [args for service, action, args in fake.calls if action == "getProxy"]
    assert get_proxy[:2] == ["/O=DIRACTest/CN=u", "g"] and isinstance(get_proxy[3], int)
    assert "CERTIFICATE REQUEST" in get_proxy[2]
