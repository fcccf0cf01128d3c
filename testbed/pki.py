"""Test PKI generated at test time with ``cryptography``: a CA, user and host certificates,
proxies (RFC 3820 and legacy Globus), and hand-built VOMS attribute certificates.

Nothing here is committed key material: every key is generated when the tests run.
Proxies are built here independently of :func:`pilot.grid.credentials.make_proxy`, so that
the loader is tested against certificates it did not make itself.

Fixtures: ``pki`` (session scope): a CA with an OpenSSL hash-link directory, a user
certificate and key, a host certificate for 127.0.0.1/localhost, all in one directory.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilot.grid.credentials import identity_from_peer_chain, peer_der_chain

PROXY_CERT_INFO_OID = "1.3.6.1.5.5.7.1.14"
INHERIT_ALL_OID = "1.3.6.1.5.5.7.21.1"
LIMITED_POLICY_OID = "1.3.6.1.4.1.3536.1.1.1.9"
VOMS_EXT_OID = "1.3.6.1.4.1.8005.100.100.5"
VOMS_ATTR_OID = "1.3.6.1.4.1.8005.100.100.4"
SHA256_RSA_OID = "1.2.840.113549.1.1.11"

USER_DN_SLASH = "/O=DIRACTest/OU=users/CN=testuser"
USER_DN_RFC4514 = "CN=testuser,OU=users,O=DIRACTest"
CA_DN_SLASH = "/O=DIRACTest/CN=DIRACTest CA"


# --- a tiny DER writer (the reader under test lives in pilot.grid.voms) -------------------


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def der_seq(*parts: bytes) -> bytes:
    return der(0x30, b"".join(parts))


def der_set(*parts: bytes) -> bytes:
    return der(0x31, b"".join(sorted(parts)))


def der_int(value: int) -> bytes:
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return der(0x06, bytes(body))


def der_octets(value: bytes) -> bytes:
    return der(0x04, value)


def der_gentime(when: datetime) -> bytes:
    return der(0x18, when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def proxy_cert_info(policy_oid: str = INHERIT_ALL_OID, path_len: int | None = None) -> bytes:
    """DER of an RFC 3820 ProxyCertInfo value."""
    length = der_int(path_len) if path_len is not None else b""
    return der_seq(length, der_seq(der_oid(policy_oid)))


# --- certificates ----------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, traditional: bool = True) -> bytes:
        fmt = (
            serialization.PrivateFormat.TraditionalOpenSSL
            if traditional
            else serialization.PrivateFormat.PKCS8
        )
        return self.key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)]) for o, v in pairs])


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    nb: datetime,
    na: datetime,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
    )


def make_ca(cn: str = "DIRACTest CA") -> Issued:
    key = new_key()
    subject = name((NameOID.ORGANIZATION_NAME, "DIRACTest"), (NameOID.COMMON_NAME, cn))
    cert = (
        _builder(subject, subject, key, now() - timedelta(days=1), now() + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _end_entity(
    ca: Issued,
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    eku: x509.ObjectIdentifier,
    not_after: datetime | None = None,
) -> x509.CertificateBuilder:
    key_usage = x509.KeyUsage(True, True, True, False, False, False, False, False, False)
    return (
        _builder(
            subject,
            ca.cert.subject,
            key,
            now() - timedelta(days=1),
            not_after or now() + timedelta(days=30),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def issue_user(ca: Issued, cn: str = "testuser", not_after: datetime | None = None) -> Issued:
    key = new_key()
    subject = name(
        (NameOID.ORGANIZATION_NAME, "DIRACTest"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "users"),
        (NameOID.COMMON_NAME, cn),
    )
    builder = _end_entity(ca, subject, key, ExtendedKeyUsageOID.CLIENT_AUTH, not_after)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def issue_host(ca: Issued, hostname: str = "localhost") -> Issued:
    key = new_key()
    subject = name(
        (NameOID.ORGANIZATION_NAME, "DIRACTest"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "hosts"),
        (NameOID.COMMON_NAME, hostname),
    )
    san = x509.SubjectAlternativeName(
        [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    builder = _end_entity(ca, subject, key, ExtendedKeyUsageOID.SERVER_AUTH)
    return Issued(builder.add_extension(san, critical=False).sign(ca.key, hashes.SHA256()), key)


def issue_proxy(
    issuer: Issued,
    *,
    style: str = "rfc3820",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    policy_oid: str = INHERIT_ALL_OID,
    path_len: int | None = None,
    cn: str | None = None,
    extensions: tuple[tuple[str, bool, bytes], ...] = (),
    key: rsa.RSAPrivateKey | None = None,
) -> Issued:
    """A proxy of ``issuer``: style "rfc3820", "legacy" (CN=proxy) or "legacy-limited"."""
    key = key or new_key()
    serial = secrets.randbits(62) | 1
    if cn is None:
        cn = {"rfc3820": str(serial), "legacy": "proxy", "legacy-limited": "limited proxy"}[style]
    subject = x509.Name(
        [
            *issuer.cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    nb = not_before or now() - timedelta(minutes=5)
    na = not_after or now() + timedelta(hours=12)
    builder = _builder(subject, issuer.cert.subject, key, nb, na, serial)
    builder = builder.add_extension(
        x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
    )
    if style == "rfc3820":
        pci = proxy_cert_info(policy_oid, path_len)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(PROXY_CERT_INFO_OID), pci), True
        )
    for oid, critical, value in extensions:
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
        builder = builder.add_extension(ext, critical)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def proxy_pem(leaf: Issued, chain: list[x509.Certificate], traditional: bool = True) -> bytes:
    """The usual proxy file layout: certificate, key, then the issuing chain."""
    out = leaf.cert_pem() + leaf.key_pem(traditional)
    for cert in chain:
        out += cert.public_bytes(serialization.Encoding.PEM)
    return out


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


# --- VOMS attribute certificates -------------------------------------------------------


def voms_extension(
    signer: Issued,
    holder: x509.Certificate,
    *,
    vo: str = "dteam",
    fqans: tuple[str, ...] = ("/dteam/Role=NULL/Capability=NULL",),
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    uri: str = "voms.example.org:15000",
) -> bytes:
    """DER value of a VOMS proxy extension holding one signed RFC 5755 AC."""
    nb = not_before or now() - timedelta(minutes=5)
    na = not_after or now() + timedelta(hours=12)
    directory_name = lambda n: der(0xA4, n.public_bytes())  # noqa: E731
    holder_field = der_seq(
        der(0xA0, der_seq(directory_name(holder.issuer)) + der_int(holder.serial_number))
    )
    issuer_field = der(0xA0, der_seq(directory_name(signer.cert.subject)))
    alg = der_seq(der_oid(SHA256_RSA_OID), der(0x05, b""))
    authority = der(0xA0, der(0x86, f"{vo}://{uri}".encode()))
    values = der_seq(*(der_octets(f.encode()) for f in fqans))
    attribute = der_seq(der_oid(VOMS_ATTR_OID), der_set(der_seq(authority, values)))
    acinfo = der_seq(
        der_int(1),
        holder_field,
        issuer_field,
        alg,
        der_int(secrets.randbits(32)),
        der_seq(der_gentime(nb), der_gentime(na)),
        der_seq(attribute),
    )
    signature = signer.key.sign(acinfo, padding.PKCS1v15(), hashes.SHA256())
    ac = der_seq(acinfo, alg, der(0x03, b"\x00" + signature))
    return der_seq(der_seq(ac))


# --- CA directory with OpenSSL hash links ----------------------------------------------


def subject_hash(name: x509.Name) -> str:
    """OpenSSL's ``X509_NAME_hash`` (the ``<hash>.0`` file name) for simple ASCII names.

    SHA-1 over the canonical encoding (each RDN as a SET of SEQUENCE{OID, UTF8String} with
    the value lower-cased and its white space collapsed, no outer SEQUENCE), first four
    bytes read little-endian.
    """
    canonical = b""
    for rdn in name.rdns:
        members = []
        for attr in rdn:
            value = " ".join(str(attr.value).split()).lower().encode()
            members.append(der_seq(der_oid(attr.oid.dotted_string), der(0x0C, value)))
        canonical += der_set(*members)
    digest = hashlib.sha1(canonical, usedforsecurity=False).digest()
    return f"{int.from_bytes(digest[:4], 'little'):08x}"


def write_ca_dir(directory: Path, ca: Issued, ca_dn_slash: str = CA_DN_SLASH) -> Path:
    """An X509_CERT_DIR: ``<hash>.0`` plus the Globus ``.signing_policy`` for it."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = subject_hash(ca.cert.subject)
    (directory / f"{digest}.0").write_bytes(ca.cert_pem())
    (directory / f"{digest}.signing_policy").write_text(
        f"access_id_CA X509 '{ca_dn_slash}'\n"
        "pos_rights globus CA:sign\n"
        "cond_subjects globus '\"/O=DIRACTest/*\"'\n"
    )
    return directory


# --- a mutual-TLS probe server on loopback ------------------------------------------------


class LoopbackTlsServer:
    """A server on 127.0.0.1 in its own thread that hands each accepted connection to
    :meth:`serve_one` (the n-th in ``connections``) and closes it; exceptions on the
    server side are kept in ``errors`` for the test to look at."""

    connection_timeout = 10.0

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.errors: list[BaseException] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def serve_one(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(self.connection_timeout)
            try:
                self.serve_one(conn)
            except Exception as exc:
                self.errors.append(exc)
            finally:
                conn.close()


class MtlsServer(LoopbackTlsServer):
    """Answers each client with the identity (end-entity DN) of its verified certificate
    chain, then closes; ``chains`` holds each client's DER chain."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(ctx)
        self.chains: list[list[bytes]] = []

    def serve_one(self, conn: socket.socket) -> None:
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            chain = peer_der_chain(tls)
            self.chains.append(chain)
            tls.sendall(identity_from_peer_chain(chain).encode() + b"\n")


def tls_ask(ctx: ssl.SSLContext, port: int, server_hostname: str = "localhost") -> str:
    """Connect with ``ctx``, return the line the :class:`MtlsServer` answers."""
    address = ("127.0.0.1", port)
    with (
        socket.create_connection(address, timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


@dataclass(frozen=True)
class Pki:
    """One test grid: a CA, a user and a host, written as files under ``root``."""

    root: Path
    ca: Issued
    user: Issued
    host: Issued
    ca_file: Path
    usercert: Path
    userkey: Path
    hostcert: Path
    hostkey: Path

    def ca_dir(self) -> Path:
        """Hash-link CA directory (made on first use; needs openssl)."""
        directory = self.root / "certificates"
        if not any(directory.glob("*.0")):
            write_ca_dir(directory, self.ca)
        return directory

    def proxy_file(self, name_: str, pem: bytes) -> Path:
        return write_private(self.root / name_, pem)


def build_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    user = issue_user(ca)
    host = issue_host(ca)
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    return Pki(
        root=root,
        ca=ca,
        user=user,
        host=host,
        ca_file=ca_file,
        usercert=_write(root / "usercert.pem", user.cert_pem()),
        userkey=write_private(root / "userkey.pem", user.key_pem(), 0o400),
        hostcert=_write(root / "hostcert.pem", host.cert_pem()),
        hostkey=write_private(root / "hostkey.pem", host.key_pem(), 0o400),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA, user and host certificate; keys are generated, never committed."""
    return build_pki(tmp_path_factory.mktemp("pki"))
