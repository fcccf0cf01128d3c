"""Stub security end to end: HTTPS, client certificates (proxies), bearer tokens, job
tokens, an expired proxy, a proxy made by grid-proxy-init, and no secret in any log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from pilot.errors import AuthError, ExitCode
from pilot.grid import credentials
from server_stub.app import AuthPolicy
from server_stub.userclient import UserClient
from testbed.pki import Pki, issue_proxy, now, pki_fixture, proxy_pem  # noqa: F401
from tests.conftest import BIN, FAST, Stub, run_pilot, secret, unavailable
from tests.tls import https_stub, proxy_file, tls_pilot_env

PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
PILOT_TOKEN = secret("pilot-secret-1234")
USER_TOKEN = secret("user-secret-5678")
PAYLOAD_TOKEN = secret("tok-abcdef-123456")


@pytest.fixture
def mtls_stub(tmp_path: Path, pki: Pki) -> Iterator[Stub]:
    stub = https_stub(tmp_path / "mtls", pki, require_cert=True, auth=AuthPolicy())
    yield stub
    stub.server.stop()


def test_mutual_tls_with_a_proxy(mtls_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    (job,) = mtls_stub.submit('Executable = "/bin/echo"; Arguments = "over TLS";')
    assert mtls_stub.client.job(job)["owner"] == "/O=DIRACTest/OU=users/CN=testuser"
    proxy = proxy_file(pki, "pilot-proxy")
    env = tls_pilot_env(pki, X509_USER_PROXY=str(proxy))
    done = run_pilot(["run", "--server", mtls_stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert mtls_stub.status(job) == "Done"
    (pilot,) = mtls_stub.client.pilots()
    assert pilot["identity"] == "/O=DIRACTest/OU=users/CN=testuser"


def test_tls_connection_kept_alive_with_the_client_identity(mtls_stub: Stub) -> None:
    """Over mutual TLS the user's connection is reused, and every request on it still
    carries the identity of the certificate it was made with."""
    ids = [mtls_stub.submit('Executable = "/bin/true";')[0] for _ in range(4)]
    for job in ids:
        assert mtls_stub.client.job(job)["owner"] == "/O=DIRACTest/OU=users/CN=testuser"
    stats = mtls_stub.server.httpd.stats
    assert stats["connections"] == 1 and stats["requests"] == 8, stats


def test_pilot_without_certificate_is_refused(mtls_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    (job,) = mtls_stub.submit('Executable = "/bin/true";')
    env = tls_pilot_env(pki)  # no proxy named anywhere (a named but missing one is exit 31)
    done = run_pilot(
        ["run", "--server", mtls_stub.url, "--proxy", "", *FAST], cwd=tmp_path, env=env, timeout=120
    )
    assert done.returncode == 22, done.stderr
    assert "TLS refused" in done.stderr
    assert mtls_stub.status(job) == "Waiting"


def test_expired_proxy_stops_the_pilot_before_any_match(
    mtls_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    (job,) = mtls_stub.submit('Executable = "/bin/true";')
    expired = issue_proxy(
        pki.user, not_before=now() - timedelta(hours=3), not_after=now() - timedelta(hours=1)
    )
    path = pki.proxy_file("expired-proxy", proxy_pem(expired, [pki.user.cert]))
    env = tls_pilot_env(pki, X509_USER_PROXY=str(path))
    done = run_pilot(["run", "--server", mtls_stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 31, done.stderr
    assert "expired" in done.stderr
    assert mtls_stub.status(job) == "Waiting" and mtls_stub.client.pilots() == []
    check = run_pilot(["check", "--json", "--disable-check", "cpu"], cwd=tmp_path, env=env)
    assert '"status": "FAILED"' in check.stdout and "expired" in check.stdout


def test_bearer_tokens_for_pilots_and_users(tmp_path: Path, pki: Pki) -> None:
    auth = AuthPolicy(frozenset({PILOT_TOKEN}), frozenset({USER_TOKEN}))
    stub = https_stub(tmp_path / "tok", pki, require_cert=False, auth=auth)
    try:
        (job,) = stub.submit('Executable = "/bin/true";')
        with (
            UserClient(
                stub.url,
                verify=credentials.ssl_context(None, ca_file=pki.ca_file),
                bearer=PILOT_TOKEN,
            ) as as_pilot,
            pytest.raises(AuthError, match="403"),
        ):
            as_pilot.submit('Executable = "/bin/true";')
        env = tls_pilot_env(pki)
        refused = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path, env=env)
        assert refused.returncode == 22 and "401" in refused.stderr
        env["BEARER_TOKEN"] = PILOT_TOKEN
        done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert stub.status(job) == "Done"
        for text in (
            done.stderr,
            done.stdout,
            stub.client.pilot_log(stub.client.pilots()[0]["stamp"]),
        ):
            assert PILOT_TOKEN not in text
    finally:
        stub.server.stop()


GRID_PROXY_INIT = shutil.which("grid-proxy-init")


def test_grid_proxy_init_proxy_drives_the_pilot(mtls_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    if GRID_PROXY_INIT is None:
        unavailable("needs globus-proxy-utils (grid-proxy-init): make system-deps installs it")
    out = tmp_path / "x509up_gpi"
    made = subprocess.run(
        [
            str(GRID_PROXY_INIT),
            "-cert",
            str(pki.usercert),
            "-key",
            str(pki.userkey),
            "-out",
            str(out),
            "-hours",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "X509_CERT_DIR": str(pki.ca_dir())},
    )
    assert made.returncode == 0, made.stderr + made.stdout
    env = tls_pilot_env(pki, X509_USER_PROXY=str(out))
    check = run_pilot(["check", "--disable-check", "cpu"], cwd=tmp_path, env=env)
    assert "/O=DIRACTest/OU=users/CN=testuser" in check.stdout
    assert re.search(r"credentials\s+PASSED.*[12]\.\d h left", check.stdout), check.stdout
    (job,) = mtls_stub.submit('Executable = "/bin/true";')
    done = run_pilot(["run", "--server", mtls_stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert mtls_stub.status(job) == "Done"


def test_payload_never_sees_the_proxy_or_token(stub: Stub, pki: Pki, tmp_path: Path) -> None:
    proxy = proxy_file(pki, "visible-proxy")
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'env; echo proxy=${X509_USER_PROXY:-none}\'";'
        ' StdOutput = "env.txt"; OutputSandbox = {"env.txt"};'
    )
    env = tls_pilot_env(pki, X509_USER_PROXY=str(proxy), BEARER_TOKEN=PAYLOAD_TOKEN)
    done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    stub.client.get_output(job, tmp_path / "o")
    seen = (tmp_path / "o" / "env.txt").read_text()
    assert "proxy=none" in seen and PAYLOAD_TOKEN not in seen
    assert str(proxy) not in seen and not PEM_KEY.search(done.stderr)


def test_stub_client_with_an_expired_proxy_says_so(mtls_stub: Stub, pki: Pki) -> None:
    """`pilot-stub --proxy` with an expired proxy: one line naming it (exit 31, as a
    pilot's), not a TLS alert from the server."""
    old = issue_proxy(
        pki.user, not_before=now() - timedelta(hours=3), not_after=now() - timedelta(hours=1)
    )
    expired = pki.proxy_file("expired-user", proxy_pem(old, [pki.user.cert]))
    done = subprocess.run(
        [
            *(str(BIN / "pilot-stub"), "--server", mtls_stub.url, "jobs"),
            *("--proxy", str(expired), "--ca-file", str(pki.ca_file)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=tls_pilot_env(pki),
    )
    lines = done.stderr.splitlines()
    assert done.returncode == int(ExitCode.CREDENTIALS), done.stderr
    assert len(lines) == 1 and f"proxy {expired} expired at" in lines[0], done.stderr
