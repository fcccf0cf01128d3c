"""Helpers the TLS tests share: a proxy file, a matcher stub over HTTPS, and a pilot
environment that names only the test CA (no credential of the machine leaks in)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pilot.grid import credentials
from server_stub.app import AuthPolicy
from server_stub.server import ServerSettings, StubServer
from server_stub.userclient import UserClient
from testbed.pki import Pki, issue_proxy, now, proxy_pem
from tests.conftest import Stub, pilot_env


def proxy_file(pki: Pki, name: str, hours: float = 12.0) -> Path:
    """A proxy of the test user valid for ``hours``, written under the PKI's folder."""
    proxy = issue_proxy(pki.user, not_after=now() + timedelta(hours=hours))
    return pki.proxy_file(name, proxy_pem(proxy, [pki.user.cert]))


def https_stub(tmp: Path, pki: Pki, *, require_cert: bool, auth: AuthPolicy) -> Stub:
    """A started stub serving HTTPS with the test host certificate, and a user client for it
    (the caller stops ``stub.server``)."""
    ctx = credentials.server_ssl_context(
        pki.hostcert, pki.hostkey, ca_file=pki.ca_file, require_client_cert=require_cert
    )
    server = StubServer(
        ServerSettings(db=tmp / "stub.db", sandbox_dir=tmp / "sb", ssl_context=ctx, auth=auth)
    )
    server.start()
    user_proxy = credentials.load_proxy(proxy_file(pki, f"user-{tmp.name}"))
    client_ctx = credentials.ssl_context(user_proxy, ca_file=pki.ca_file)
    token = next(iter(auth.user_tokens), None)
    client = UserClient(server.url, verify=client_ctx, bearer=token)
    return Stub(server.url, server, client, tmp)


def tls_pilot_env(pki: Pki, **extra: str) -> dict[str, str]:
    """The pilot's environment trusting only the test CA, with no proxy or token of its own."""
    env = pilot_env(X509_CERT_FILE=str(pki.ca_file))
    for var in ("X509_USER_PROXY", "BEARER_TOKEN", "BEARER_TOKEN_FILE", "X509_CERT_DIR"):
        env.pop(var, None)
    env["XDG_RUNTIME_DIR"] = str(pki.root / "no-runtime")
    env.update(extra)
    return env
