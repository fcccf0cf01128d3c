"""The payload gets a fresh proxy delegated from its owner's (stub backend), never the
pilot's: upload with ``pilot-stub proxy-upload``, delegation per job with the job token,
the file in the job directory (0600), its lifetime, renewal, and jobs without a proxy."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pilot.backends.base import MatchedJob
from pilot.errors import CredentialError, ExitCode, NoStoredProxy, ServerError
from pilot.grid import credentials, voms
from pilot.grid.voms import x509_slash_dn as slash_dn
from pilot.job import delegation
from server_stub import cli as stub_cli
from server_stub.app import AuthPolicy
from server_stub.proxies import load_trust
from server_stub.server import ServerSettings, StubServer
from server_stub.userclient import UserClient
from testbed.pki import (  # noqa: F401
    Pki,
    issue_proxy,
    issue_user,
    make_ca,
    now,
    pki_fixture,
    proxy_pem,
)
from tests.conftest import BIN, FAST, Stub, run_pilot, start_stub, unavailable
from tests.test_security import _pilot_env as _env
from tests.test_security import _proxy_file

OWNER_DN = "/O=DIRACTest/OU=users/CN=testuser"

# The payload prints the public parts of its proxy file (never the key), its mode, and
# whether it can read the pilot's proxy.
PAYLOAD = """#!/bin/sh
echo "proxy=${X509_USER_PROXY:-none}"
[ -n "$X509_USER_PROXY" ] || exit 0
echo "mode=$(stat -c %a "$X509_USER_PROXY")"
echo "indir=$(dirname "$X509_USER_PROXY")"
openssl crl2pkcs7 -nocrl -certfile "$X509_USER_PROXY" | openssl pkcs7 -print_certs > certs.pem
openssl verify -allow_proxy_certs -CAfile ca.pem -untrusted "$X509_USER_PROXY" \
    "$X509_USER_PROXY" && echo verified
[ -r "$1" ] && echo "pilot proxy readable" || echo "pilot proxy hidden"
"""


def needs_openssl() -> None:
    """The payloads inspect their proxy with the openssl command (Debian package openssl)."""
    if shutil.which("openssl") is None:
        unavailable("needs the openssl command (apt-get install openssl)")


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def needs_bwrap() -> None:
    """Bubblewrap isolation (Debian package bubblewrap): fails under CI when missing."""
    if shutil.which("bwrap") is None:
        unavailable("needs bwrap (bubblewrap): apt-get install bubblewrap")


def _trusting_stub(tmp: Path, pki: Pki, *, require_cert: bool = True, cas: bool = True) -> Stub:
    """An HTTPS stub (client certificates required unless ``require_cert`` is false) whose
    proxy uploads must lead to the test CA (``--ca-file``; none without ``cas``); the user
    talks to it with a proxy of the test user."""
    ctx = credentials.server_ssl_context(
        pki.hostcert, pki.hostkey, ca_file=pki.ca_file, require_client_cert=require_cert
    )
    trusted = load_trust(None, pki.ca_file) if cas else ()
    settings = ServerSettings(
        db=tmp / "stub.db", sandbox_dir=tmp / "sb", ssl_context=ctx, proxy_cas=trusted
    )
    server = StubServer(settings)
    server.start()
    user_proxy = credentials.load_proxy(_proxy_file(pki, f"user-{tmp.name}"))
    client_ctx = credentials.ssl_context(user_proxy, ca_file=pki.ca_file)
    return Stub(server.url, server, UserClient(server.url, verify=client_ctx), tmp)


@pytest.fixture
def proxy_stub(tmp_path: Path, pki: Pki) -> Iterator[Stub]:
    stub = _trusting_stub(tmp_path / "stub", pki)
    yield stub
    stub.client.close()
    stub.server.stop()


def _pilot_identity(pki: Pki, tmp_path: Path) -> Path:
    """The pilot runs as someone else than the job's owner: a 'pilot' certificate's proxy."""
    pilot_user = issue_user(pki.ca, cn="pilot-agent")
    proxy = issue_proxy(pilot_user, not_after=now() + timedelta(hours=12))
    return pki.proxy_file(f"pilot-{tmp_path.name}", proxy_pem(proxy, [pilot_user.cert]))


def _proxy_upload(stub: Stub, pki: Pki, *args: str) -> subprocess.CompletedProcess[str]:
    """``pilot-stub proxy-upload`` as a user would run it, from the user certificate."""
    argv = [str(BIN / "pilot-stub"), "--server", stub.url, "--ca-file", str(pki.ca_file)]
    argv += ["proxy-upload", "--cert", str(pki.usercert), "--key", str(pki.userkey), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env(pki))


def _stored_key(stub: Stub) -> bytes:
    stored = stub.server.store.proxy_of(OWNER_DN)
    assert stored is not None
    return _spki(credentials.proxy_from_pem(stored[0]).key.public_key())


def test_payload_gets_a_fresh_delegated_proxy_of_its_owner(
    proxy_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    needs_openssl()
    upload = _proxy_upload(proxy_stub, pki)
    assert upload.returncode == 0, upload.stderr
    assert f"proxy of {OWNER_DN} stored" in upload.stdout
    pilot_proxy = _pilot_identity(pki, tmp_path)
    (job,) = proxy_stub.submit(
        f'Executable = "payload.sh"; Arguments = "{pilot_proxy}"; WallTime = 600;'
        ' InputSandbox = {"payload.sh", "ca.pem"};'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt", "certs.pem"};',
        {"payload.sh": PAYLOAD, "ca.pem": pki.ca_file.read_text()},
    )
    env = _env(pki, X509_USER_PROXY=str(pilot_proxy))
    started = datetime.now(UTC)
    work = tmp_path / "w"
    done = run_pilot(
        ["run", "--server", proxy_stub.url, "--work-dir", str(work), "--isolation", "auto", *FAST],
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert proxy_stub.status(job) == "Done", proxy_stub.client.logging_info(job)
    proxy_stub.client.get_output(job, tmp_path / "o")
    out = (tmp_path / "o" / "out.txt").read_text()
    assert "mode=600" in out and "verified" in out, out
    assert f"proxy={work}/job-{job}/{delegation.PROXY_FILE}" in out, out
    certs = x509.load_pem_x509_certificates((tmp_path / "o" / "certs.pem").read_bytes())
    leaf = certs[0]
    # the job's owner, through a fresh RFC 3820 proxy signed by the stored one
    assert voms.proxy_info(leaf) is not None and voms.proxy_info(leaf).kind == "rfc3820"  # type: ignore[union-attr]
    assert (
        credentials.identity_from_peer_chain(
            [c.public_bytes(serialization.Encoding.DER) for c in certs], slash=True
        )
        == OWNER_DN
    )
    pilot_loaded = credentials.load_proxy(pilot_proxy)
    assert pilot_loaded.identity_slash != OWNER_DN
    # a key of its own: not the stored proxy's, not the pilot's, not the user's
    fresh = _spki(leaf.public_key())
    assert fresh != _stored_key(proxy_stub)
    assert fresh != _spki(pilot_loaded.key.public_key())
    assert fresh != _spki(pki.user.cert.public_key())
    assert certs[1].subject == x509.Name(leaf.subject.rdns[:-1])  # issued by the stored one
    # lifetime: WallTime 600 s + 1 h margin
    lifetime = (leaf.not_valid_after_utc - started).total_seconds()
    assert 4200 - 120 < lifetime <= 4200 + 120, lifetime
    # the job's copy is gone afterwards
    assert not any(work.rglob(delegation.PROXY_FILE))
    assert "payload proxy of /O=DIRACTest/OU=users/CN=testuser" in done.stderr
    # the pilot's own proxy is masked under isolation (auto: bwrap where it is installed)
    if "payload isolation: bwrap" not in done.stderr:
        needs_bwrap()
        unavailable(
            "bwrap is installed but not usable here: the pilot proxy's masking is unchecked"
        )
    assert "pilot proxy hidden" in out, out


def test_owner_without_a_proxy_runs_without_or_fails_when_required(
    proxy_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    (plain,) = proxy_stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo proxy=${X509_USER_PROXY:-none}\'";'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    (needs,) = proxy_stub.submit('Executable = "/bin/true"; PayloadProxy = "Required";')
    env = _env(pki, X509_USER_PROXY=str(_pilot_identity(pki, tmp_path)))
    done = run_pilot(["run", "--server", proxy_stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    job = proxy_stub.client.job(plain)
    assert job["status"] == "Done"
    assert "no payload proxy (owner has none stored)" in job["application_status"]
    proxy_stub.client.get_output(plain, tmp_path / "o")
    assert "proxy=none" in (tmp_path / "o" / "out.txt").read_text()
    failed = proxy_stub.client.job(needs)
    assert failed["status"] == "Failed"
    assert failed["minor_status"].startswith(
        "Failed to get payload proxy: the server holds no proxy"
    )


def test_proxy_upload_refuses_someone_elses_proxy(
    proxy_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    """The stored proxy is tied to the identity the user connects with."""
    other = issue_user(pki.ca, cn="someone-else")
    with pytest.raises(Exception, match="403"):
        proxy_stub.client.proxy_upload((other.cert, other.key, ()), timedelta(hours=1))
    assert proxy_stub.server.store.proxy_of("/O=DIRACTest/OU=users/CN=someone-else") is None
    bad = _proxy_upload(proxy_stub, pki, "--valid", "-3")
    assert bad.returncode == 2 and "--valid -3" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("hours", ["nan", "inf", "0", "-3", "9000"])
def test_proxy_upload_refuses_a_lifetime_out_of_range(
    pki: Pki, hours: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any file is read or server called, naming the option."""
    argv = ["--server", "http://127.0.0.1:9", "proxy-upload", "--valid", hours]
    code = stub_cli.main([*argv, "--cert", str(pki.usercert), "--key", str(pki.userkey)])
    assert code == 2 and f"--valid {float(hours):g}" in capsys.readouterr().err


def test_a_job_token_gets_only_its_own_jobs_proxy(proxy_stub: Stub, pki: Pki) -> None:
    assert _proxy_upload(proxy_stub, pki).returncode == 0
    (job,) = proxy_stub.submit('Executable = "/bin/true";')
    _, request = credentials.new_proxy_request()
    body = {"request": request.decode(), "lifetime": 3600, "limited": False}
    with pytest.raises(Exception, match="403"):
        proxy_stub.client.json(
            "POST", f"/api/jobs/{job}/proxy", json=body, headers={"X-Job-Token": "forged"}
        )


def _run_payload(
    stub: Stub, pki: Pki, tmp_path: Path, *pilot_args: str
) -> tuple[str, list[x509.Certificate], subprocess.CompletedProcess[str]]:
    """One PAYLOAD job run by a real pilot (``pilot_args`` added): its output, the
    certificates of its proxy file (none without one) and the pilot's result."""
    tmp_path.mkdir(exist_ok=True)
    pilot_proxy = _pilot_identity(pki, tmp_path)
    (job,) = stub.submit(
        f'Executable = "payload.sh"; Arguments = "{pilot_proxy}"; WallTime = 600;'
        ' InputSandbox = {"payload.sh", "ca.pem"};'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt", "certs.pem"};',
        {"payload.sh": PAYLOAD, "ca.pem": pki.ca_file.read_text()},
    )
    argv = ["run", "--server", stub.url, "--work-dir", str(tmp_path / "w"), *pilot_args, *FAST]
    done = run_pilot(argv, cwd=tmp_path, env=_env(pki, X509_USER_PROXY=str(pilot_proxy)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert stub.status(job) == "Done", stub.client.logging_info(job)
    stub.client.get_output(job, tmp_path / "o")
    out = (tmp_path / "o" / "out.txt").read_text()
    certs_file = tmp_path / "o" / "certs.pem"
    certs = x509.load_pem_x509_certificates(certs_file.read_bytes()) if certs_file.exists() else []
    return out, certs, done


def _openssl_text(cert: x509.Certificate, tmp_path: Path) -> str:
    """``openssl x509 -text`` of ``cert``: the proxy's policy as OpenSSL reads it."""
    path = tmp_path / f"cert-{cert.serial_number}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    shown = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return shown.stdout


def _chain_identity(certs: list[x509.Certificate]) -> str:
    der = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    return credentials.identity_from_peer_chain(der, slash=True)


def test_payload_proxy_limited_gives_a_limited_proxy(
    proxy_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    """``--payload-proxy limited``: the payload's proxy carries the limited-proxy policy
    (as OpenSSL shows it), where the default gives inheritAll."""
    needs_openssl()
    assert _proxy_upload(proxy_stub, pki).returncode == 0
    out, certs, _ = _run_payload(proxy_stub, pki, tmp_path, "--payload-proxy", "limited")
    assert "verified" in out and "mode=600" in out, out
    assert _chain_identity(certs) == OWNER_DN
    text = _openssl_text(certs[0], tmp_path)
    assert "Proxy Certificate Information: critical" in text, text
    assert f"Policy Language: {voms.LIMITED_POLICY}" in text, text
    assert "Inherit all" not in text, text
    # the stored proxy it was signed with is a full one: the limit is the delegation's
    assert "Policy Language: Inherit all" in _openssl_text(certs[1], tmp_path)
    full_out, full_certs, _ = _run_payload(proxy_stub, pki, tmp_path / "full")
    assert "verified" in full_out, full_out
    assert "Policy Language: Inherit all" in _openssl_text(full_certs[0], tmp_path)


def test_payload_proxy_off_gives_no_proxy(proxy_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    """``--payload-proxy off``: the owner has a proxy stored, yet no payload gets one, and a
    job that requires one fails saying so."""
    assert _proxy_upload(proxy_stub, pki).returncode == 0
    (needs,) = proxy_stub.submit('Executable = "/bin/true"; PayloadProxy = "Required";')
    out, certs, done = _run_payload(proxy_stub, pki, tmp_path, "--payload-proxy", "off")
    assert "proxy=none" in out and certs == [], out
    assert "payload proxy of" not in done.stderr, done.stderr[-3000:]
    assert not any((tmp_path / "w").rglob(delegation.PROXY_FILE))
    failed = proxy_stub.client.job(needs)
    assert failed["status"] == "Failed"
    assert failed["minor_status"] == (
        "Failed to get payload proxy: payload proxies are off on this pilot"
    )


def test_proxy_upload_from_an_existing_proxy(proxy_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    """``pilot-stub proxy-upload --proxy FILE`` (no certificate or key): the stored proxy is
    signed by that proxy, and a payload's proxy delegated from it is the owner's."""
    needs_openssl()
    users_proxy = issue_proxy(pki.user, not_after=now() + timedelta(hours=6))
    path = pki.proxy_file(f"users-proxy-{tmp_path.name}", proxy_pem(users_proxy, [pki.user.cert]))
    argv = [str(BIN / "pilot-stub"), "--server", proxy_stub.url, "--ca-file", str(pki.ca_file)]
    argv += ["--proxy", str(path), "proxy-upload"]
    env = _env(pki, X509_USER_CERT=str(tmp_path / "none.pem"), X509_USER_KEY=str(tmp_path / "n"))
    upload = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert upload.returncode == 0, upload.stderr
    assert f"proxy of {OWNER_DN} stored" in upload.stdout
    stored = proxy_stub.server.store.proxy_of(OWNER_DN)
    assert stored is not None
    stored_proxy = credentials.proxy_from_pem(stored[0])
    assert stored_proxy.certs[1] == users_proxy.cert  # signed by the uploaded-from proxy
    # no longer than that proxy (6 h), though proxy-upload asks for 168 h by default
    assert stored_proxy.not_after <= users_proxy.cert.not_valid_after_utc
    out, certs, _ = _run_payload(proxy_stub, pki, tmp_path)
    assert "verified" in out, out
    assert _chain_identity(certs) == OWNER_DN
    assert certs[1] == stored_proxy.certs[0] and certs[2] == users_proxy.cert
    assert _spki(certs[0].public_key()) not in {
        _spki(users_proxy.cert.public_key()),
        _spki(stored_proxy.key.public_key()),
    }


# -- who may store a proxy ------------------------------------------------------------------


def _rogue_testuser() -> tuple[x509.Certificate, object, tuple[x509.Certificate, ...]]:
    """A certificate with the test user's DN from a CA the stub does not trust."""
    rogue = issue_user(make_ca("Rogue CA"), cn="testuser")
    assert slash_dn(rogue.cert.subject) == OWNER_DN
    return rogue.cert, rogue.key, ()


def test_proxy_upload_refuses_a_chain_from_an_untrusted_ca(proxy_stub: Stub, pki: Pki) -> None:
    """The caller is the test user (client certificate) but uploads a chain that a rogue CA
    issued for the same DN: refused, the stored proxy untouched."""
    assert _proxy_upload(proxy_stub, pki).returncode == 0
    before = proxy_stub.server.store.proxy_of(OWNER_DN)
    with pytest.raises(ServerError, match=r"403 .*not issued by a CA this stub trusts"):
        proxy_stub.client.proxy_upload(_rogue_testuser(), timedelta(hours=1))  # type: ignore[arg-type]
    assert proxy_stub.server.store.proxy_of(OWNER_DN) == before


def _token_stub(tmp: Path, pki: Pki, user_token: str | None) -> Stub:
    """A plain HTTP stub on loopback with the test CA as its upload trust store: open, or
    closed to users without ``user_token``."""
    auth = AuthPolicy(user_tokens=frozenset({user_token})) if user_token else AuthPolicy()
    stub = start_stub(tmp, auth=auth, proxy_cas=load_trust(None, pki.ca_file))
    stub.client.close()
    return Stub(stub.url, stub.server, UserClient(stub.url, bearer=user_token), tmp)


def _cli_upload(stub: Stub, pki: Pki, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "pilot-stub"), "--server", stub.url, *extra, "proxy-upload"]
    argv += ["--cert", str(pki.usercert), "--key", str(pki.userkey)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env(pki))


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_a_bearer_token_cannot_store_a_proxy(pki: Pki, tmp_path: Path) -> None:
    """The audit's case: a user-token holder stores a rogue chain claiming the test user's
    DN. A token proves no DN: refused (403), even with a genuine chain."""
    stub = _token_stub(tmp_path / "s", pki, "user-secret-1")
    try:
        with pytest.raises(ServerError, match=r"403 .*a bearer token proves no DN"):
            stub.client.proxy_upload(_rogue_testuser(), timedelta(hours=1))  # type: ignore[arg-type]
        genuine = _cli_upload(stub, pki, "--token", "user-secret-1")
        assert genuine.returncode == ExitCode.AUTH
        assert _one_line(genuine) == (
            "pilot-stub: proxy refused: a bearer token proves no DN; upload over HTTPS with"
            " your certificate or proxy as the client certificate"
        )
        assert stub.server.store.proxy_of(OWNER_DN) is None
    finally:
        stub.client.close()
        stub.server.stop()


def test_an_open_stub_stores_no_proxy(pki: Pki, tmp_path: Path) -> None:
    """Open loopback stub (no tokens, no TLS), even with a CA to check against: nothing
    ties the DN to whoever submits jobs there, so no proxy is stored."""
    stub = _token_stub(tmp_path / "s", pki, None)
    try:
        done = _cli_upload(stub, pki)
        assert done.returncode == ExitCode.AUTH
        assert _one_line(done) == (
            "pilot-stub: proxy refused: no client certificate to tie it to; upload over HTTPS"
            " with your certificate or proxy as the client certificate"
        )
        assert stub.server.store.proxy_of(OWNER_DN) is None
    finally:
        stub.client.close()
        stub.server.stop()


def test_a_stub_without_cas_refuses_every_upload(pki: Pki, tmp_path: Path) -> None:
    """HTTPS with client certificates but no --ca-dir/--ca-file for uploads: refused."""
    stub = _trusting_stub(tmp_path / "s", pki, cas=False)
    try:
        done = _cli_upload(stub, pki, "--ca-file", str(pki.ca_file))
        assert done.returncode == ExitCode.AUTH
        assert _one_line(done) == (
            "pilot-stub: proxy refused: this stub has no CA to check proxies against"
            " (start it with --ca-dir or --ca-file)"
        )
        assert stub.server.store.proxy_of(OWNER_DN) is None
    finally:
        stub.client.close()
        stub.server.stop()


def test_a_caller_without_certificate_cannot_claim_a_dn(pki: Pki, tmp_path: Path) -> None:
    """Client certificates optional: a caller without one may not own its jobs as the test
    user's DN through X-User (they would get that user's delegated proxy)."""
    stub = _trusting_stub(tmp_path / "s", pki, require_cert=False)
    anonymous = UserClient(stub.url, verify=credentials.ssl_context(None, ca_file=pki.ca_file))
    try:
        assert _proxy_upload(stub, pki).returncode == 0
        jdl_text = 'Executable = "/bin/true";'
        with pytest.raises(ServerError, match="403 X-User cannot be a DN"):
            anonymous.json("POST", "/api/jobs/jdl", json=jdl_text, headers={"X-User": OWNER_DN})
        assert stub.client.jobs() == []
        (labelled,) = anonymous.json(
            "POST", "/api/jobs/jdl", json=jdl_text, headers={"X-User": "alice"}
        )
        assert stub.client.job(labelled["JobID"])["owner"] == "alice"
    finally:
        anonymous.close()
        stub.client.close()
        stub.server.stop()


def test_serve_checks_uploads_against_its_ca_dir(pki: Pki, tmp_path: Path) -> None:
    """``pilot-stub serve --ca-dir`` (hash links) as a user runs it: a proxy of the test user
    is stored; the same CLI with a rogue CA's certificate of the same DN is refused."""
    needs_openssl()  # the hash link's name
    ca_dir = pki.ca_dir()
    assert load_trust(ca_dir, None) == (pki.ca.cert,)  # the .signing_policy is no certificate
    url_file = tmp_path / "url"
    argv = [str(BIN / "pilot-stub"), "serve", "--port", "0", "--db", str(tmp_path / "s.db")]
    argv += ["--cert", str(pki.hostcert), "--key", str(pki.hostkey), "--ca-dir", str(ca_dir)]
    argv += ["--require-client-cert", "--url-file", str(url_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("https://127.0.0.1:"), url
        client = ["--server", url, "--ca-file", str(pki.ca_file)]
        good = _cli_upload_as(pki.usercert, pki.userkey, client, pki)
        assert good.returncode == 0 and f"proxy of {OWNER_DN} stored" in good.stdout, good.stderr
        cert, key, _ = _rogue_testuser()
        rogue_cert = tmp_path / "rogue-cert.pem"
        rogue_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        rogue_key = pki.proxy_file(
            f"rogue-key-{tmp_path.name}",
            key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        )
        # the rogue certificate signs the upload; the connection is the real user's proxy
        user_proxy = _proxy_file(pki, f"conn-{tmp_path.name}")
        bad = _cli_upload_as(rogue_cert, rogue_key, [*client, "--proxy", str(user_proxy)], pki)
        assert bad.returncode == ExitCode.AUTH
        assert _one_line(bad).startswith(
            f"pilot-stub: proxy refused: {OWNER_DN} is not issued by a CA this stub trusts"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _cli_upload_as(
    cert: Path, key: Path, client: list[str], pki: Pki
) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "pilot-stub"), *client, "proxy-upload", "--cert", str(cert)]
    argv += ["--key", str(key)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env(pki))


def test_serve_names_an_unusable_ca_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for option, value, want in (
        ("--ca-file", tmp_path / "missing.pem", f"--ca-file {tmp_path / 'missing.pem'}: "),
        ("--ca-file", tmp_path / "junk.pem", "no PEM certificate in it"),
        ("--ca-dir", tmp_path / "nodir", f"--ca-dir {tmp_path / 'nodir'}: not a directory"),
    ):
        argv = ["serve", "--db", str(tmp_path / "s.db"), option, str(value)]
        assert stub_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, err


# -- in-process: the delegation pieces ------------------------------------------------------


class _Signer:
    """A backend that signs with a given proxy, counting calls."""

    def __init__(self, issuer: credentials.Proxy | None, lifetime: float | None = None) -> None:
        self.issuer = issuer
        self.lifetime = lifetime
        self.calls = 0

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        self.calls += 1
        if self.issuer is None:
            raise NoStoredProxy("nothing stored")
        seconds = self.lifetime if self.lifetime is not None else lifetime
        chain = credentials.sign_proxy_request(
            self.issuer, request_pem.encode(), timedelta(seconds=seconds), limited=limited
        )
        return chain.decode()


def _serial(path: Path) -> int:
    return int(credentials.load_proxy(path).certs[0].serial_number)


def _owner_proxy(pki: Pki) -> credentials.Proxy:
    proxy = issue_proxy(pki.user, not_after=now() + timedelta(hours=2))
    return credentials.proxy_from_pem(proxy_pem(proxy, [pki.user.cert]))


def test_delegated_chain_must_be_for_our_key(pki: Pki) -> None:
    owner = _owner_proxy(pki)
    key, request = credentials.new_proxy_request()
    chain = credentials.sign_proxy_request(owner, request, timedelta(minutes=10), limited=True)
    proxy, pem = credentials.proxy_from_chain(key, chain)
    assert proxy.limited and proxy.identity_slash == OWNER_DN and proxy.kind == "rfc3820"
    assert b"PRIVATE KEY" in pem and b"PRIVATE KEY" not in chain
    other_key, _ = credentials.new_proxy_request()
    with pytest.raises(CredentialError, match="does not match"):
        credentials.proxy_from_chain(other_key, chain)
    with pytest.raises(CredentialError, match="not a PEM certificate request"):
        credentials.sign_proxy_request(owner, b"garbage", timedelta(minutes=1))


def test_lifetime_is_wall_time_plus_margin_capped() -> None:
    policy = delegation.DelegationPolicy(margin=3600, max_lifetime=48 * 3600)
    assert policy.lifetime(600) == 4200
    assert policy.lifetime(None) == 24 * 3600 + 3600
    assert policy.lifetime(10 * 86400) == 48 * 3600
    with pytest.raises(Exception, match="payload_proxy_max_hours"):
        delegation.DelegationPolicy(max_lifetime=10)
    assert delegation.required("required") and not delegation.required("Optional")


def test_a_long_job_gets_its_proxy_renewed_before_it_expires(pki: Pki, tmp_path: Path) -> None:
    signer = _Signer(_owner_proxy(pki), lifetime=4)
    job = MatchedJob("7", "[]")
    policy = delegation.DelegationPolicy(renew_fraction=0.5)
    holder = delegation.PayloadProxy(signer, job, tmp_path, 4, policy)
    first = holder.obtain()
    assert oct(holder.path.stat().st_mode & 0o777) == "0o600"
    holder.start_renewal(first)
    try:
        deadline = time.monotonic() + 30
        # signer.calls counts a renewal when it is asked, before its file is written
        while (signer.calls < 2 or _serial(holder.path) == first.certs[0].serial_number) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert signer.calls >= 2
        renewed = credentials.load_proxy(holder.path, strict=True)
        assert renewed.certs[0].serial_number != first.certs[0].serial_number
        assert renewed.not_after > first.not_after and renewed.identity_slash == OWNER_DN
    finally:
        holder.remove()
    assert not holder.path.exists()


@pytest.mark.parametrize(
    ("owner_left", "fraction", "calls"),
    [
        (30, 0.25, 1),  # the owner's proxy ends in 30 s: renew with a quarter of that left
        (8, 0.9, 2),  # renewing gains nothing: back off instead of asking every second
    ],
)
def test_renewal_is_paced_by_what_the_server_gave(
    pki: Pki, tmp_path: Path, owner_left: int, fraction: float, calls: int
) -> None:
    """A job asks for an hour but the owner's stored proxy ends sooner: the renewal thread
    must not call the server (and make a key) every second until it expires."""
    proxy = issue_proxy(pki.user, not_after=now() + timedelta(seconds=owner_left))
    signer = _Signer(credentials.proxy_from_pem(proxy_pem(proxy, [pki.user.cert])))
    policy = delegation.DelegationPolicy(renew_fraction=fraction)
    holder = delegation.PayloadProxy(signer, MatchedJob("9", "[]"), tmp_path, 3600, policy)
    holder.start_renewal(holder.obtain())
    try:
        time.sleep(3.5)
    finally:
        holder.remove()
    assert signer.calls == calls


class _SlowSigner(_Signer):
    """Its second answer (the first renewal) comes only when the test releases it."""

    def __init__(self, issuer: credentials.Proxy) -> None:
        super().__init__(issuer, lifetime=4)
        self.asked, self.release = threading.Event(), threading.Event()

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        if self.calls == 1:
            self.asked.set()
            self.release.wait(30)
        return super().delegate_proxy(job, request_pem, lifetime, limited)


def test_a_renewal_answered_after_remove_writes_no_file(pki: Pki, tmp_path: Path) -> None:
    """The server answers a renewal after the payload ended (remove() stopped waiting for
    it): the proxy must not reappear in the job directory, where stage-out could pack it."""
    signer = _SlowSigner(_owner_proxy(pki))
    policy = delegation.DelegationPolicy(renew_fraction=0.9)
    holder = delegation.PayloadProxy(signer, MatchedJob("10", "[]"), tmp_path, 4, policy)
    holder.join_timeout = 0.1
    holder.start_renewal(holder.obtain())
    assert signer.asked.wait(30)
    holder.remove()
    assert not holder.path.exists()
    signer.release.set()
    assert holder._thread is not None
    holder._thread.join(30)
    assert signer.calls == 2 and not holder.path.exists()


def test_no_stored_proxy_is_its_own_error(tmp_path: Path) -> None:
    holder = delegation.PayloadProxy(
        _Signer(None), MatchedJob("8", "[]"), tmp_path, 600, delegation.DelegationPolicy()
    )
    with pytest.raises(NoStoredProxy):
        holder.obtain()
    assert not holder.path.exists()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_other_jobs_cannot_read_a_payload_proxy_under_isolation(
    proxy_stub: Stub, pki: Pki, tmp_path: Path, mode: str
) -> None:
    """Two jobs at once under bubblewrap: each sees its own proxy, not its neighbour's
    (without isolation the same payloads do see it: the masking is the isolation's)."""
    if mode == "bwrap":
        needs_bwrap()
    assert _proxy_upload(proxy_stub, pki).returncode == 0
    script = (
        "#!/bin/sh\n"
        'test -r "$X509_USER_PROXY" && echo own\n'
        'sleep "$1"\n'
        'me=$(basename "$PILOT_JOB_DIR")\n'
        'for d in "$PILOT_JOB_DIR"/../job-*; do\n'
        '  [ "$(basename "$d")" = "$me" ] && continue\n'
        '  test -r "$d/.payload-proxy.pem" && echo "neighbour $d"\n'
        "done\n"
        'sleep "$2"\n'
    )
    peek = (
        'Executable = "peek.sh"; InputSandbox = {"peek.sh"}; Arguments = "%s";'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    # the first job holds its proxy for 8 s; the second looks for it after 2 s
    first = proxy_stub.submit(peek % "0 8", {"peek.sh": script})[0]
    second = proxy_stub.submit(peek % "2 0", {"peek.sh": script})[0]
    env = _env(pki, X509_USER_PROXY=str(_pilot_identity(pki, tmp_path)))
    argv = ["run", "--server", proxy_stub.url, "--isolation", mode, "--cores", "2"]
    done = run_pilot([*argv, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    outs = {}
    for job in (first, second):
        proxy_stub.client.get_output(job, tmp_path / f"o{job}")
        outs[job] = (tmp_path / f"o{job}" / "out.txt").read_text()
        assert "own" in outs[job], outs[job]
    assert ("neighbour" in outs[second]) == (mode == "none"), outs[second]
    history = proxy_stub.client.logging_info(second)
    starts = {
        job: next(
            r["Timestamp"]
            for r in proxy_stub.client.logging_info(job)
            if r["MinorStatus"] == "Application"
        )
        for job in (first, second)
    }
    ends = {job: proxy_stub.client.logging_info(job)[-1]["Timestamp"] for job in (first, second)}
    assert starts[second] + 2 < ends[first], history  # the second looked while the first ran


def test_bad_payload_proxy_settings_stop_the_pilot_before_it_registers(
    stub: Stub, tmp_path: Path
) -> None:
    for flag, value, want in (
        ("--payload-proxy", "sometimes", "--payload-proxy sometimes: "),
        ("--payload-proxy-max-hours", "0", "--payload-proxy-max-hours 0: too small"),
    ):
        done = run_pilot(["run", "--server", stub.url, flag, value, *FAST], cwd=tmp_path)
        assert done.returncode == 2 and want in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert stub.client.pilots() == []
