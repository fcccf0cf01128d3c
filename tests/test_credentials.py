"""Unit tests of pilot.grid.credentials and pilot.grid.voms against a PKI generated at test time.

The proxies loaded here are built by testbed/pki.py, independently of make_proxy; the
real grid tools are exercised in test_credentials_interop.py.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import ssl
import subprocess
import threading
import warnings
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.errors import CredentialError, ExitCode
from pilot.grid import credentials, voms
from pilot.grid.credentials import (
    Proxy,
    Token,
    ca_locations,
    find_proxy,
    find_token,
    identity_from_peer_chain,
    load_proxy,
    make_proxy,
    server_ssl_context,
    ssl_context,
    token_expiry,
    validate,
    write_proxy,
)
from testbed import pki as P
from testbed.pki import Issued, MtlsServer, Pki, pki_fixture, tls_ask  # noqa: F401


def _proxy_file(pki: Pki, tmp_path: Path, **kwargs: object) -> tuple[Path, Issued]:
    proxy = P.issue_proxy(pki.user, **kwargs)  # type: ignore[arg-type]
    path = P.write_private(tmp_path / "x509up", P.proxy_pem(proxy, [pki.user.cert]))
    return path, proxy


def _fake_uid() -> int:
    return 3_000_000_000 + secrets.randbelow(10**8)


# --- loading ---------------------------------------------------------------------------


def test_load_rfc3820_proxy(pki: Pki, tmp_path: Path) -> None:
    path, proxy = _proxy_file(pki, tmp_path)
    loaded = load_proxy(path)
    assert loaded.kind == "rfc3820"
    assert loaded.identity == P.USER_DN_RFC4514
    assert loaded.identity_slash == P.USER_DN_SLASH
    assert loaded.certs == (proxy.cert, pki.user.cert)
    assert loaded.path == path
    assert loaded.voms is None
    assert not loaded.limited
    assert loaded.not_after == proxy.cert.not_valid_after_utc
    assert timedelta(hours=11, minutes=59) < loaded.time_left() <= timedelta(hours=12)
    validate(loaded, timedelta(hours=11))


def test_time_left_is_the_earliest_not_after_of_the_chain(pki: Pki, tmp_path: Path) -> None:
    user = P.issue_user(pki.ca, not_after=P.now() + timedelta(hours=2))
    proxy = P.issue_proxy(user, not_after=P.now() + timedelta(hours=12))
    path = P.write_private(tmp_path / "p", P.proxy_pem(proxy, [user.cert, pki.ca.cert]))
    loaded = load_proxy(path)
    assert loaded.not_after == user.cert.not_valid_after_utc
    now = P.now()
    assert loaded.time_left(now) == user.cert.not_valid_after_utc - now
    assert loaded.time_left(now + timedelta(days=1)) == timedelta(0)


def test_identity_skips_every_proxy_of_a_proxy_chain(pki: Pki, tmp_path: Path) -> None:
    first = P.issue_proxy(pki.user)
    second = P.issue_proxy(first)
    path = P.write_private(tmp_path / "p", P.proxy_pem(second, [first.cert, pki.user.cert]))
    loaded = load_proxy(path)
    assert loaded.identity_slash == P.USER_DN_SLASH
    assert len(loaded.certs) == 3


@pytest.mark.parametrize(
    ("style", "limited"), [("legacy", False), ("legacy-limited", True), ("rfc3820", False)]
)
def test_legacy_and_limited_proxies_load(
    pki: Pki, tmp_path: Path, style: str, limited: bool
) -> None:
    path, _ = _proxy_file(pki, tmp_path, style=style)
    loaded = load_proxy(path)
    assert loaded.kind == ("rfc3820" if style == "rfc3820" else "legacy")
    assert loaded.limited is limited
    assert loaded.identity_slash == P.USER_DN_SLASH


def test_rfc3820_limited_policy_marks_the_proxy_limited(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path, policy_oid=P.LIMITED_POLICY_OID)
    assert load_proxy(path).limited


def test_end_entity_certificate_with_separate_key(pki: Pki) -> None:
    loaded = load_proxy(pki.usercert, key_path=pki.userkey)
    assert loaded.kind == "end-entity"
    assert loaded.identity == P.USER_DN_RFC4514
    assert loaded.not_after == pki.user.cert.not_valid_after_utc


def test_pkcs8_key_and_key_anywhere_in_the_file(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    pem = proxy.cert_pem() + pki.user.cert_pem() + proxy.key_pem(traditional=False)
    assert load_proxy(P.write_private(tmp_path / "p", pem)).identity == P.USER_DN_RFC4514


def test_group_readable_proxy_warns_and_strict_refuses(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = _proxy_file(pki, tmp_path)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="pilot.grid.credentials"):
        load_proxy(path)
    assert f"{path} holds a private key but has mode 0644" in caplog.text
    with pytest.raises(CredentialError, match="must not be readable by group or others"):
        load_proxy(path, strict=True)
    path.chmod(0o600)
    load_proxy(path, strict=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"proxy file .*/nope is not readable") as info:
        load_proxy(tmp_path / "nope")
    assert info.value.exit_code == ExitCode.CREDENTIALS


def test_unreadable_proxy_path(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"proxy file .* is not readable: Is a directory"):
        load_proxy(tmp_path)


def test_no_private_key(pki: Pki, tmp_path: Path) -> None:
    path = P.write_private(tmp_path / "p", pki.user.cert_pem())
    with pytest.raises(CredentialError, match=f"no private key in {path}"):
        load_proxy(path)


def test_not_a_certificate(tmp_path: Path) -> None:
    path = P.write_private(tmp_path / "p", b"hello\n")
    with pytest.raises(CredentialError, match="no readable certificate"):
        load_proxy(path)


def test_key_that_does_not_match(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    pem = proxy.cert_pem() + pki.host.key_pem() + pki.user.cert_pem()
    with pytest.raises(CredentialError, match="does not match its certificate"):
        load_proxy(P.write_private(tmp_path / "p", pem))


def test_key_that_cannot_sign_a_proxy_is_refused(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    key = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = P.write_private(tmp_path / "p", P.issue_proxy(pki.user).cert_pem() + key)
    with pytest.raises(CredentialError, match=r"is a X25519PrivateKey: a proxy needs an RSA"):
        load_proxy(path)


def test_dsa_key_is_refused_without_touching_deprecated_types(pki: Pki, tmp_path: Path) -> None:
    """DSA is refused by name: the pilot never imports cryptography's (deprecated) DSA types."""
    made = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DSA",
         "-pkeyopt", "dsa_paramgen_bits:1024"],
        capture_output=True, check=True,
    )
    params = P.write_private(tmp_path / "dsa.param", made.stdout)
    key = subprocess.run(
        ["openssl", "genpkey", "-paramfile", str(params)], capture_output=True, check=True
    ).stdout
    path = P.write_private(tmp_path / "p", P.issue_proxy(pki.user).cert_pem() + key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no deprecation warning reaches the user
        with pytest.raises(CredentialError, match=r"is a DSAPrivateKey: a proxy needs an RSA"):
            load_proxy(path)


def test_encrypted_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    key = proxy.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    path = P.write_private(tmp_path / "p", proxy.cert_pem() + key + pki.user.cert_pem())
    with pytest.raises(CredentialError, match="is encrypted"):
        load_proxy(path)


def test_corrupt_key_error_names_no_key_material(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    lines = proxy.key_pem().splitlines()
    lines[5] = b"A" * len(lines[5])
    path = P.write_private(
        tmp_path / "p", proxy.cert_pem() + b"\n".join(lines) + b"\n" + pki.user.cert_pem()
    )
    # (the RSA consistency check is skipped for speed; the damaged modulus no longer
    # matches the certificate's, which refuses the key just the same)
    with pytest.raises(
        CredentialError, match=r"cannot be read|does not match its certificate"
    ) as info:
        load_proxy(path)
    assert "PRIVATE" not in str(info.value) and lines[3].decode() not in str(info.value)


def test_chain_without_the_issuer_of_a_proxy(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    path = P.write_private(tmp_path / "p", P.proxy_pem(proxy, []))
    with pytest.raises(CredentialError, match="stops at a proxy"):
        load_proxy(path)


def test_chain_signed_by_someone_else(pki: Pki, tmp_path: Path) -> None:
    other = P.issue_user(pki.ca, cn="testuser")  # same DN, other key
    proxy = P.issue_proxy(other)
    path = P.write_private(tmp_path / "p", P.proxy_pem(proxy, [pki.user.cert]))
    with pytest.raises(CredentialError, match=r"broken chain: .* is not signed by"):
        load_proxy(path)


def test_proxy_after_the_end_entity(pki: Pki, tmp_path: Path) -> None:
    proxy = P.issue_proxy(pki.user)
    pem = pki.user.cert_pem() + pki.user.key_pem() + proxy.cert_pem()
    with pytest.raises(CredentialError, match="after the end-entity"):
        load_proxy(P.write_private(tmp_path / "p", pem))


def test_proxy_not_named_after_its_issuer(pki: Pki, tmp_path: Path) -> None:
    key = P.new_key()
    subject = P.name((NameOID.ORGANIZATION_NAME, "DIRACTest"), (NameOID.COMMON_NAME, "1"))
    pci = x509.UnrecognizedExtension(
        x509.ObjectIdentifier(P.PROXY_CERT_INFO_OID), P.proxy_cert_info()
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(pki.user.cert.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(P.now() - timedelta(minutes=1))
        .not_valid_after(P.now() + timedelta(hours=1))
        .add_extension(pci, critical=True)
        .sign(pki.user.key, hashes.SHA256())
    )
    path = P.write_private(tmp_path / "p", P.proxy_pem(Issued(cert, key), [pki.user.cert]))
    with pytest.raises(CredentialError, match="not named after its issuer plus one CN"):
        load_proxy(path)


def test_path_length_constraint(pki: Pki, tmp_path: Path) -> None:
    first = P.issue_proxy(pki.user, path_len=0)
    second = P.issue_proxy(first)
    path = P.write_private(tmp_path / "p", P.proxy_pem(second, [first.cert, pki.user.cert]))
    with pytest.raises(CredentialError, match="path length constraint"):
        load_proxy(path)
    ok = P.write_private(tmp_path / "q", P.proxy_pem(first, [pki.user.cert]))
    with pytest.raises(CredentialError, match=r"cannot delegate: .*path length"):
        make_proxy(load_proxy(ok), timedelta(hours=1))


# --- validation --------------------------------------------------------------------------


def test_expired_proxy_fails_with_a_clear_message(pki: Pki, tmp_path: Path) -> None:
    past = P.now() - timedelta(days=1)
    path, _ = _proxy_file(pki, tmp_path, not_before=past - timedelta(hours=12), not_after=past)
    loaded = load_proxy(path)
    assert loaded.time_left() == timedelta(0)
    with pytest.raises(CredentialError) as info:
        validate(loaded)
    stamp = past.strftime("%Y-%m-%d %H:%M:%S")
    assert str(info.value) == f"proxy {path} expired at {stamp} UTC"


def test_expired_user_certificate_is_named(pki: Pki, tmp_path: Path) -> None:
    user = P.issue_user(pki.ca, not_after=P.now() + timedelta(hours=1))
    proxy = P.issue_proxy(user)
    path = P.write_private(tmp_path / "p", P.proxy_pem(proxy, [user.cert]))
    loaded = load_proxy(path)
    with pytest.raises(CredentialError, match=r"expired at .* \(its chain: /O=DIRACTest/OU=users"):
        validate(loaded, now=P.now() + timedelta(hours=2))


def test_min_time_left_and_not_yet_valid(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path, not_after=P.now() + timedelta(hours=1))
    loaded = load_proxy(path)
    validate(loaded, timedelta(minutes=30))
    with pytest.raises(CredentialError, match=r"has only 0:5\d:\d\d left, 2:00:00 required"):
        validate(loaded, timedelta(hours=2))
    with pytest.raises(CredentialError, match="is not valid before"):
        validate(loaded, now=P.now() - timedelta(hours=1))


# --- VOMS and DER -------------------------------------------------------------------------


def _voms_proxy(pki: Pki, tmp_path: Path, **voms_kwargs: object) -> Path:
    ext = P.voms_extension(pki.host, pki.user.cert, **voms_kwargs)  # type: ignore[arg-type]
    path, _ = _proxy_file(pki, tmp_path, extensions=((P.VOMS_EXT_OID, False, ext),))
    return path


def test_voms_attributes_are_read(pki: Pki, tmp_path: Path) -> None:
    fqans = ("/dteam/Role=NULL/Capability=NULL", "/dteam/prod/Role=pilot/Capability=NULL")
    na = P.now() + timedelta(hours=3)
    loaded = load_proxy(_voms_proxy(pki, tmp_path, fqans=fqans, not_after=na))
    info = loaded.voms
    assert info is not None
    assert (info.vo, info.fqans, info.uri) == ("dteam", fqans, "voms.example.org:15000")
    assert info.issuer == "/O=DIRACTest/OU=hosts/CN=localhost"
    assert info.not_after == na and info.primary_fqan == fqans[0]
    assert timedelta(hours=2, minutes=59) < info.time_left() <= timedelta(hours=3)


def test_expired_voms_attributes_fail_validation(pki: Pki, tmp_path: Path) -> None:
    past = P.now() - timedelta(hours=1)
    path = _voms_proxy(pki, tmp_path, not_before=past - timedelta(hours=1), not_after=past)
    with pytest.raises(CredentialError, match=r"VOMS attributes of proxy .* expired at"):
        validate(load_proxy(path))


def test_unreadable_voms_extension_is_ignored_with_a_warning(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = P.der_seq(P.der_seq(P.der_int(5)))
    path, _ = _proxy_file(pki, tmp_path, extensions=((P.VOMS_EXT_OID, False, bad),))
    with caplog.at_level(logging.WARNING, logger="pilot.grid.credentials"):
        assert load_proxy(path).voms is None
    assert "ignoring unreadable VOMS attributes" in caplog.text


def test_every_truncation_of_an_ac_is_a_der_error(pki: Pki) -> None:
    value = P.voms_extension(pki.host, pki.user.cert)
    assert voms.parse_voms_extension(value).vo == "dteam"
    for cut in range(len(value)):
        with pytest.raises(voms.DerError):
            voms.parse_voms_extension(value[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=299))
def test_der_reader_raises_only_der_error(junk: bytes, position: int) -> None:
    for data in (junk, _SAMPLE_AC[:position] + junk + _SAMPLE_AC[position:]):
        with contextlib.suppress(voms.DerError):
            voms.parse_voms_extension(data)


_SAMPLE_AC = P.voms_extension(P.make_ca(), P.make_ca().cert)


@given(st.lists(st.integers(min_value=0, max_value=2**70), min_size=1, max_size=8))
def test_oid_round_trip(arcs: list[int]) -> None:
    dotted = ".".join(["1", "3", *map(str, arcs)])
    assert voms.decode_oid(voms.read_tlv(voms.encode_oid(dotted)).content) == dotted
    assert voms.encode_oid(dotted) == P.der_oid(dotted)


def test_proxy_cert_info_round_trip() -> None:
    assert voms.parse_proxy_cert_info(voms.encode_proxy_cert_info("1.3.6.1.5.5.7.21.1")) == (
        None,
        "1.3.6.1.5.5.7.21.1",
    )
    assert voms.parse_proxy_cert_info(P.proxy_cert_info(P.LIMITED_POLICY_OID, 3)) == (
        3,
        P.LIMITED_POLICY_OID,
    )


def test_slash_dn_matches_openssl_names() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "ch")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Users"),
                    x509.NameAttribute(NameOID.USER_ID, "jdoe"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "j@example.org")]
            ),
        ]
    )
    slash = voms.x509_slash_dn(name)
    assert slash.startswith("/DC=ch/") and slash.endswith("/emailAddress=j@example.org")
    assert slash.split("/")[2] in ("OU=Users+UID=jdoe", "UID=jdoe+OU=Users")


# --- delegation -------------------------------------------------------------------------


def _load_pem(tmp_path: Path, pem: bytes, name: str = "new") -> Proxy:
    path = tmp_path / name
    write_proxy(path, pem)
    return load_proxy(path, strict=True)


def test_make_proxy_from_a_user_certificate(pki: Pki, tmp_path: Path) -> None:
    pem = make_proxy((pki.user.cert, pki.user.key, [pki.ca.cert]), timedelta(hours=2))
    assert pem.count(b"BEGIN CERTIFICATE") == 3 and pem.count(b"PRIVATE KEY-----") == 2
    new = _load_pem(tmp_path, pem)
    assert (new.kind, new.identity, new.limited) == ("rfc3820", P.USER_DN_RFC4514, False)
    leaf = new.certs[0]
    assert leaf.subject.rdns[:-1] == pki.user.cert.subject.rdns
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value
    assert cn == str(leaf.serial_number)
    ext = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(P.PROXY_CERT_INFO_OID))
    assert ext.critical
    assert voms.parse_proxy_cert_info(ext.value.value) == (None, P.INHERIT_ALL_OID)  # type: ignore[attr-defined]
    assert timedelta(hours=1, minutes=59) < new.time_left() <= timedelta(hours=2)
    assert new.certs[0].public_key().key_size == 2048  # type: ignore[union-attr]


def test_delegated_proxy_never_outlives_its_issuer(pki: Pki, tmp_path: Path) -> None:
    path, issuer = _proxy_file(pki, tmp_path, not_after=P.now() + timedelta(minutes=30))
    new = _load_pem(tmp_path, make_proxy(load_proxy(path), timedelta(days=3), key_bits=1024))
    assert new.not_after == issuer.cert.not_valid_after_utc
    assert len(new.certs) == 3 and new.certs[0].public_key().key_size == 1024  # type: ignore[union-attr]


def test_limited_and_legacy_delegation(pki: Pki, tmp_path: Path) -> None:
    limited = _load_pem(
        tmp_path,
        make_proxy(
            load_proxy(pki.usercert, key_path=pki.userkey), timedelta(hours=1), limited=True
        ),
        "lim",
    )
    assert limited.limited and limited.kind == "rfc3820"
    child = _load_pem(tmp_path, make_proxy(limited, timedelta(hours=1)), "child")
    assert child.limited, "a proxy of a limited proxy is limited"
    legacy_path, _ = _proxy_file(pki, tmp_path, style="legacy")
    legacy = _load_pem(
        tmp_path, make_proxy(load_proxy(legacy_path), timedelta(hours=1), rfc3820=False), "l"
    )
    assert legacy.kind == "legacy"
    assert legacy.certs[0].subject.rdns[-1].rfc4514_string() == "CN=proxy"
    with pytest.raises(CredentialError, match="cannot make an RFC 3820 proxy from a legacy"):
        make_proxy(load_proxy(legacy_path), timedelta(hours=1))


def test_make_proxy_refuses_an_expired_issuer_and_bad_arguments(pki: Pki, tmp_path: Path) -> None:
    past = P.now() - timedelta(hours=1)
    path, _ = _proxy_file(pki, tmp_path, not_before=past - timedelta(hours=1), not_after=past)
    with pytest.raises(CredentialError, match=r"cannot delegate from .*: expired at"):
        make_proxy(load_proxy(path), timedelta(hours=1))
    with pytest.raises(ValueError, match="positive"):
        make_proxy((pki.user.cert, pki.user.key, []), timedelta(0))
    with pytest.raises(ValueError, match="key size"):
        make_proxy((pki.user.cert, pki.user.key, []), timedelta(hours=1), key_bits=512)
    with pytest.raises(CredentialError, match="does not match"):
        make_proxy((pki.user.cert, pki.host.key, []), timedelta(hours=1))


def test_write_proxy_is_0600_even_over_a_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "x509up"
    target.write_bytes(b"old")
    target.chmod(0o644)
    write_proxy(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x509up"]


# --- TLS -----------------------------------------------------------------------------------


def _server_ctx(pki: Pki, require: bool = True) -> ssl.SSLContext:
    return server_ssl_context(
        pki.hostcert, pki.hostkey, ca_file=pki.ca_file, require_client_cert=require
    )


def test_mutual_tls_with_an_in_memory_proxy(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path)
    proxy = dataclasses.replace(load_proxy(path), path=None)
    client = ssl_context(proxy, ca_file=pki.ca_file)
    assert client.verify_flags & ssl.VERIFY_ALLOW_PROXY_CERTS
    with MtlsServer(_server_ctx(pki)) as server:
        assert tls_ask(client, server.port) == P.USER_DN_RFC4514
    assert not server.errors
    assert len(server.chains[0]) == 3  # proxy, user, CA


def test_mutual_tls_from_the_proxy_file_and_after_it_vanished(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path)
    proxy = load_proxy(path)
    direct = ssl_context(proxy, ca_file=pki.ca_file)
    path.unlink()  # a renewal agent may replace the file: the copy path is then used
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tempfile.tempdir", str(tmp_path))
        copied = ssl_context(proxy, ca_file=pki.ca_file)
    assert list(tmp_path.iterdir()) == [], "the private copy is removed at once"
    with MtlsServer(_server_ctx(pki)) as server:
        assert tls_ask(direct, server.port) == P.USER_DN_RFC4514
        assert tls_ask(copied, server.port) == P.USER_DN_RFC4514


def test_server_refuses_a_client_without_certificate(pki: Pki) -> None:
    client = ssl_context(None, ca_file=pki.ca_file)
    answer: str | None
    with MtlsServer(_server_ctx(pki)) as server:
        try:
            answer = tls_ask(client, server.port)
        except (ssl.SSLError, ConnectionError):
            answer = None
    assert not answer, "no identity may be answered to a client without certificate"
    assert server.errors and isinstance(server.errors[0], ssl.SSLError)
    assert not server.chains


def test_client_refuses_a_server_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(P.make_ca("Other CA").cert_pem())
    with (
        MtlsServer(_server_ctx(pki, require=False)) as server,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        tls_ask(ssl_context(None, ca_file=other), server.port)


def test_client_verifies_the_server_through_a_hash_directory(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path)
    client = ssl_context(load_proxy(path), ca_dir=pki.ca_dir())
    with MtlsServer(_server_ctx(pki)) as server:
        assert tls_ask(client, server.port) == P.USER_DN_RFC4514


def test_end_entity_certificate_with_separate_key_as_client_credential(pki: Pki) -> None:
    user = load_proxy(pki.usercert, key_path=pki.userkey)  # the cert file alone has no key
    with MtlsServer(_server_ctx(pki)) as server:
        assert tls_ask(ssl_context(user, ca_file=pki.ca_file), server.port) == P.USER_DN_RFC4514
    assert [len(chain) for chain in server.chains] == [2]


def test_ca_dir_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"CA directory .* does not exist"):
        ssl_context(None, ca_dir=tmp_path / "missing")


def test_httpx_sends_the_proxy_when_given_the_context_as_verify(pki: Pki, tmp_path: Path) -> None:
    path, _ = _proxy_file(pki, tmp_path)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            chain = credentials.peer_der_chain(self.connection)  # type: ignore[arg-type]
            body = identity_from_peer_chain(chain, slash=True).encode()
            seen.append(body.decode())
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = _server_ctx(pki).wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        ctx = ssl_context(load_proxy(path), ca_file=pki.ca_file)
        with httpx.Client(verify=ctx, timeout=10) as client:
            reply = client.get(f"https://localhost:{httpd.server_address[1]}/")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert reply.status_code == 200 and reply.text == P.USER_DN_SLASH == seen[0]


def test_identity_from_peer_chain(pki: Pki) -> None:
    first = P.issue_proxy(pki.user)
    second = P.issue_proxy(first, style="rfc3820")
    der = [
        c.public_bytes(serialization.Encoding.DER)
        for c in (second.cert, first.cert, pki.user.cert, pki.ca.cert)
    ]
    assert identity_from_peer_chain(der) == P.USER_DN_RFC4514
    assert identity_from_peer_chain(der, slash=True) == P.USER_DN_SLASH
    assert identity_from_peer_chain(der[2:]) == P.USER_DN_RFC4514
    with pytest.raises(CredentialError, match="no end-entity"):
        identity_from_peer_chain(der[:2])
    with pytest.raises(CredentialError, match="no certificate"):
        identity_from_peer_chain([])
    with pytest.raises(CredentialError, match="unreadable"):
        identity_from_peer_chain([b"\x30\x03junk"])


# --- discovery and tokens ------------------------------------------------------------------


def test_find_proxy(tmp_path: Path) -> None:
    assert find_proxy({"X509_USER_PROXY": "/some/where"}) == Path("/some/where")
    uid = _fake_uid()
    assert find_proxy({}, uid=uid) is None
    default = Path(f"/tmp/x509up_u{uid}")
    default.write_bytes(b"")
    try:
        assert find_proxy({}, uid=uid) == default
    finally:
        default.unlink()


def test_ca_locations(tmp_path: Path) -> None:
    assert ca_locations({"X509_CERT_DIR": "/cas", "X509_CERT_FILE": "/b.pem"}) == (
        Path("/cas"),
        Path("/b.pem"),
    )
    assert ca_locations({}, default_dir=tmp_path) == (tmp_path, None)
    assert ca_locations({}, default_dir=tmp_path / "missing") == (None, None)


def _jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_token_discovery_order(tmp_path: Path) -> None:
    uid = _fake_uid()
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / f"bt_u{uid}").write_text("from-xdg\n")
    named = tmp_path / "named"
    named.write_text("  from-file \n")
    env = {
        "BEARER_TOKEN": " from-env ",
        "BEARER_TOKEN_FILE": str(named),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    assert find_token(env, uid=uid) == Token("from-env", "BEARER_TOKEN")
    del env["BEARER_TOKEN"]
    assert find_token(env, uid=uid) == Token("from-file", f"BEARER_TOKEN_FILE={named}")
    del env["BEARER_TOKEN_FILE"]
    assert find_token(env, uid=uid) == Token("from-xdg", str(runtime / f"bt_u{uid}"))
    del env["XDG_RUNTIME_DIR"]
    assert find_token(env, uid=uid) is None
    fallback = Path(f"/tmp/bt_u{uid}")
    fallback.write_text("from-tmp")
    try:
        assert find_token({"BEARER_TOKEN": "  "}, uid=uid) == Token("from-tmp", str(fallback))
    finally:
        fallback.unlink()


def test_named_token_file_that_is_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"token file .* is not readable"):
        find_token({"BEARER_TOKEN_FILE": str(tmp_path / "nope")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        find_token({"BEARER_TOKEN_FILE": str(tmp_path / "empty")})


def test_token_value_is_masked() -> None:
    token = Token("eyJsecret.value.sig", "BEARER_TOKEN")
    for text in (repr(token), str(token), f"{token}", repr([token])):
        assert "secret" not in text and "BEARER_TOKEN" in text


def test_token_expiry() -> None:
    assert token_expiry(
        Token(_jwt({"exp": 1_900_000_000, "sub": "x"}), "t")
    ) == datetime.fromtimestamp(1_900_000_000, UTC)
    assert token_expiry(_jwt({"sub": "x"})) is None
    assert token_expiry(_jwt({"exp": "soon"})) is None
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.%%%.c") is None
    assert token_expiry("a.bm90IGpzb24.c") is None  # "not json"


# --- secrets never reach the logs ------------------------------------------------------


def test_no_key_or_token_in_debug_logs(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_value = _jwt({"exp": 1_900_000_000, "secret": secrets.token_hex(16)})
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        path, proxy = _proxy_file(pki, tmp_path)
        path.chmod(0o640)
        loaded = load_proxy(path)
        texts.append(repr(loaded))
        pem = make_proxy(loaded, timedelta(hours=1))
        write_proxy(tmp_path / "delegated", pem)
        ssl_context(loaded, ca_file=pki.ca_file)
        ssl_context(dataclasses.replace(loaded, path=None), ca_file=pki.ca_file)
        token_file = tmp_path / "tok"
        token_file.write_text(token_value)
        token_file.chmod(0o644)
        for env in ({"BEARER_TOKEN": token_value}, {"BEARER_TOKEN_FILE": str(token_file)}):
            token = find_token(env)
            assert token is not None and token.value == token_value
            texts.append(repr(token))
            token_expiry(token)
        assert token_expiry("x." + token_value.split(".")[1][:-2] + "!.y") is None
        for bad in (b"garbage", pem.replace(b"A", b"B", 40)):
            try:
                load_proxy(P.write_private(tmp_path / "bad", bad))
            except CredentialError as exc:
                texts.append(str(exc))
    texts.append(caplog.text)
    assert "delegated RFC 3820 proxy" in caplog.text, "the logs were captured"
    secret_lines = [
        line.decode()
        for key_pem in (proxy.key_pem(), pem)
        for line in re.search(rb"PRIVATE KEY-----(.*?)-----END", key_pem, re.S)[1].split()  # type: ignore[index]
    ]
    assert len(secret_lines) > 40
    for text in texts:
        assert "PRIVATE KEY" not in text
        assert token_value not in text and token_value.split(".")[1] not in text
        assert not [line for line in secret_lines if line[:32] in text]
