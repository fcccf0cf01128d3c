"""pilot.grid.credentials against the real grid tools: Globus (grid-proxy-init/-info), VOMS
(voms-proxy-fake/-info) and OpenSSL, all on a CA generated at test time.

Each test skips, naming the tool and its Debian package, when that tool is missing
(scripts/system-deps.sh installs them).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from pilot import proc
from pilot.errors import CredentialError
from pilot.grid.credentials import (
    load_proxy,
    make_proxy,
    server_ssl_context,
    ssl_context,
    validate,
    write_proxy,
)
from testbed import pki as P
from testbed.pki import MtlsServer, Pki, pki_fixture, tls_ask  # noqa: F401
from tests.conftest import unavailable

FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/prod/Role=pilot/Capability=NULL")


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        unavailable(f"needs {package} ({tool}): make system-deps installs it")


@pytest.fixture(scope="module")
def grid_env(pki: Pki) -> dict[str, str]:
    """Environment for the grid tools: only our test CA directory is trusted."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(pki.root), "X509_CERT_DIR": str(pki.ca_dir())}


def run(argv: list[str], env: dict[str, str]) -> proc.CommandResult:
    result = proc.run(argv, env=env, timeout=60)
    assert not result.timed_out, f"{argv[0]} timed out"
    return result


def grid_proxy_init(pki: Pki, env: dict[str, str], out: Path, *flags: str) -> Path:
    need("grid-proxy-init", "globus-proxy-utils")
    argv = ["grid-proxy-init", "-q", "-cert", str(pki.usercert), "-key", str(pki.userkey)]
    result = run([*argv, "-out", str(out), *flags], env)
    assert result.ok, result.stdout + result.stderr
    return out


def info_fields(text: str) -> dict[str, str]:
    """``name : value`` lines of grid-proxy-info / voms-proxy-info (first of each name)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip(), value.strip())
    return fields


def seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s


# --- proxies made by grid-proxy-init -----------------------------------------------------


def test_grid_proxy_init_proxy_is_loaded(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    path = grid_proxy_init(pki, grid_env, tmp_path / "x509up", "-verify", "-valid", "12:00")
    proxy = load_proxy(path, strict=True)
    assert (proxy.kind, proxy.limited) == ("rfc3820", False)
    assert proxy.identity == P.USER_DN_RFC4514
    assert proxy.identity_slash == P.USER_DN_SLASH
    assert timedelta(hours=11, minutes=58) < proxy.time_left() <= timedelta(hours=12)
    validate(proxy, timedelta(hours=11))
    identity = run(["grid-proxy-info", "-file", str(path), "-identity"], grid_env)
    timeleft = run(["grid-proxy-info", "-file", str(path), "-timeleft"], grid_env)
    assert identity.ok and timeleft.ok, identity.stderr + timeleft.stderr
    assert identity.stdout.strip() == proxy.identity_slash
    assert abs(int(timeleft.stdout) - proxy.time_left().total_seconds()) <= 5


def test_grid_proxy_init_proxy_is_a_mutual_tls_client_credential(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    proxy = load_proxy(grid_proxy_init(pki, grid_env, tmp_path / "x509up"))
    server_ctx = server_ssl_context(
        pki.hostcert, pki.hostkey, ca_dir=pki.ca_dir(), require_client_cert=True
    )
    from_file = ssl_context(proxy, ca_dir=pki.ca_dir())
    from_memory = ssl_context(dataclasses.replace(proxy, path=None), ca_file=pki.ca_file)
    with MtlsServer(server_ctx) as server:
        assert tls_ask(from_file, server.port) == P.USER_DN_RFC4514
        assert tls_ask(from_memory, server.port, "127.0.0.1") == P.USER_DN_RFC4514
    assert not server.errors
    assert [len(chain) for chain in server.chains] == [3, 3]  # proxy, user, CA


@pytest.mark.parametrize(
    ("flags", "kind", "limited"),
    [
        (["-old"], "legacy", False),
        (["-old", "-limited"], "legacy", True),
        (["-limited"], "rfc3820", True),
    ],
)
def test_grid_proxy_init_legacy_and_limited_proxies_load(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path, flags: list[str], kind: str, limited: bool
) -> None:
    proxy = load_proxy(grid_proxy_init(pki, grid_env, tmp_path / "x509up", *flags))
    assert (proxy.kind, proxy.limited, proxy.identity) == (kind, limited, P.USER_DN_RFC4514)
    validate(proxy, timedelta(hours=11))


def test_gsi3_draft_proxy_is_refused_by_name(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    path = grid_proxy_init(pki, grid_env, tmp_path / "x509up", "-draft")
    with pytest.raises(CredentialError, match="GSI-3 draft proxy"):
        load_proxy(path)


# --- proxies made by make_proxy, judged by the real tools ---------------------------------


def delegated(pki: Pki, tmp_path: Path, **kwargs: object) -> Path:
    issuer = load_proxy(pki.usercert, key_path=pki.userkey)
    path = tmp_path / "delegated"
    write_proxy(path, make_proxy(issuer, timedelta(hours=3), **kwargs))  # type: ignore[arg-type]
    assert path.stat().st_mode & 0o777 == 0o600
    return path


def test_make_proxy_passes_openssl_verify(pki: Pki, tmp_path: Path) -> None:
    need("openssl", "openssl")
    path = delegated(pki, tmp_path)
    argv = ["openssl", "verify", "-CAfile", str(pki.ca_file), "-untrusted", str(path), str(path)]
    allowed = run([*argv[:2], "-allow_proxy_certs", *argv[2:]], {"PATH": "/usr/bin:/bin"})
    assert allowed.ok and allowed.stdout.strip() == f"{path}: OK", allowed.stderr
    refused = run(argv, {"PATH": "/usr/bin:/bin"})  # control: it really is a proxy
    assert not refused.ok and "proxy" in refused.stdout + refused.stderr


@pytest.mark.parametrize(
    ("kwargs", "shown_type"),
    [
        ({}, "RFC 3820 compliant impersonation proxy"),
        ({"limited": True}, "RFC 3820 compliant limited proxy"),
        ({"rfc3820": False}, "full legacy globus proxy"),
        ({"rfc3820": False, "limited": True}, "limited legacy globus proxy"),
    ],
)
def test_make_proxy_passes_grid_proxy_info(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path, kwargs: dict[str, bool], shown_type: str
) -> None:
    need("grid-proxy-info", "globus-proxy-utils")
    path = delegated(pki, tmp_path, **kwargs)
    shown = run(["grid-proxy-info", "-file", str(path)], grid_env)
    assert shown.ok, shown.stdout + shown.stderr
    fields = info_fields(shown.stdout)
    assert fields["identity"] == P.USER_DN_SLASH
    assert fields["type"] == shown_type
    assert abs(seconds(fields["timeleft"]) - load_proxy(path).time_left().total_seconds()) <= 5


def test_make_proxy_passes_voms_proxy_info(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    need("voms-proxy-info", "voms-clients")
    path = delegated(pki, tmp_path)
    shown = run(["voms-proxy-info", "-file", str(path)], grid_env)
    assert shown.ok, shown.stdout + shown.stderr
    fields = info_fields(shown.stdout)
    assert fields["identity"] == P.USER_DN_SLASH
    assert fields["type"] == "RFC compliant proxy"


# --- VOMS: voms-proxy-fake makes a real AC offline --------------------------------------


def voms_proxy_fake(pki: Pki, env: dict[str, str], out: Path, path_length: int) -> Path:
    need("voms-proxy-fake", "voms-clients")
    argv = ["voms-proxy-fake", "-q", "-rfc", "-cert", str(pki.usercert), "-key", str(pki.userkey)]
    argv += ["-hostcert", str(pki.hostcert), "-hostkey", str(pki.hostkey), "-voms", "dteam"]
    argv += ["-uri", "voms.example.org:15000", "-path-length", str(path_length)]
    for fqan in FQANS:
        argv += ["-fqan", fqan]
    result = run([*argv, "-out", str(out)], env)
    assert result.ok and out.exists(), result.stdout + result.stderr
    return out


def test_voms_attributes_of_a_voms_proxy_fake_proxy(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    proxy = load_proxy(voms_proxy_fake(pki, grid_env, tmp_path / "x509up", 1))
    assert proxy.voms is not None
    assert (proxy.voms.vo, proxy.voms.fqans) == ("dteam", FQANS)
    assert proxy.voms.uri == "voms.example.org:15000"
    assert proxy.voms.issuer == "/O=DIRACTest/OU=hosts/CN=localhost"
    assert timedelta(hours=11, minutes=58) < proxy.voms.time_left() <= timedelta(hours=12)
    validate(proxy, timedelta(hours=11))


def test_delegating_a_voms_proxy_keeps_the_attributes_and_the_path_length(
    pki: Pki, grid_env: dict[str, str], tmp_path: Path
) -> None:
    need("voms-proxy-info", "voms-clients")
    parent = load_proxy(voms_proxy_fake(pki, grid_env, tmp_path / "x509up", 1))
    child_path = tmp_path / "payload"
    write_proxy(child_path, make_proxy(parent, timedelta(hours=1)))
    child = load_proxy(child_path)
    assert child.voms == parent.voms and child.identity == parent.identity
    shown = run(["voms-proxy-info", "-all", "-file", str(child_path)], grid_env)
    assert shown.ok, shown.stdout + shown.stderr
    assert re.search(r"^VO\s+: dteam$", shown.stdout, re.M)
    assert [
        line.split(":", 1)[1].strip()
        for line in shown.stdout.splitlines()
        if line.startswith("attribute")
    ] == list(FQANS)
    with pytest.raises(CredentialError, match="path length constraint"):
        make_proxy(child, timedelta(hours=1))  # voms-proxy-fake allowed one level only
