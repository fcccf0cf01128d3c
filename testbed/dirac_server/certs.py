"""Test PKI for the local DIRAC server, generated with ``cryptography`` (no key is committed).

Layout written under ``<dir>``::

    ca/ca.pem, ca/ca.key             the test CA
    certificates/<hash>.0, .r0       X509_CERT_DIR: the CA under its subject hash, an empty CRL
    hostcert.pem, hostkey.pem        /O=DIRACTest/CN=localhost (SAN localhost, 127.0.0.1)
    user/usercert.pem, userkey.pem   /O=DIRACTest/OU=users/CN=testuser   (job owner)
    other/usercert.pem, userkey.pem  /O=DIRACTest/OU=users/CN=otheruser  (owner, no stored proxy)
    pilot/usercert.pem, userkey.pem  /O=DIRACTest/OU=pilots/CN=testpilot (the pilots' identity)

The proxies are made later by DIRAC's own ``dirac-proxy-init`` (they carry the DIRAC group).
A PKI cached from before an identity existed gets that identity from the same CA.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.pki import subject_hash

CA_SUBJECT = ((NameOID.ORGANIZATION_NAME, "DIRACTest"), (NameOID.COMMON_NAME, "DIRACTest CA"))
HOST_SUBJECT = ((NameOID.ORGANIZATION_NAME, "DIRACTest"), (NameOID.COMMON_NAME, "localhost"))
USER_SUBJECT = (
    (NameOID.ORGANIZATION_NAME, "DIRACTest"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "users"),
    (NameOID.COMMON_NAME, "testuser"),
)
USER_DN = "/O=DIRACTest/OU=users/CN=testuser"
OTHER_SUBJECT = (
    (NameOID.ORGANIZATION_NAME, "DIRACTest"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "users"),
    (NameOID.COMMON_NAME, "otheruser"),
)
OTHER_DN = "/O=DIRACTest/OU=users/CN=otheruser"
PILOT_SUBJECT = (
    (NameOID.ORGANIZATION_NAME, "DIRACTest"),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, "pilots"),
    (NameOID.COMMON_NAME, "testpilot"),
)
PILOT_DN = "/O=DIRACTest/OU=pilots/CN=testpilot"
# directory under the PKI -> subject of the client identities
IDENTITIES = {"user": USER_SUBJECT, "other": OTHER_SUBJECT, "pilot": PILOT_SUBJECT}
HOST_DN = "/O=DIRACTest/CN=localhost"
_TEN_YEARS = timedelta(days=3650)


def _name(pairs: tuple[tuple[x509.ObjectIdentifier, str], ...]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + _TEN_YEARS)
    )


def _key_usage(*, sign_certs: bool = False, encipher: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=encipher and not sign_certs,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    subject: tuple[tuple[x509.ObjectIdentifier, str], ...],
    usages: list[x509.ObjectIdentifier],
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    builder = (
        _builder(_name(subject), ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _make_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = _name(CA_SUBJECT)
    cert = (
        _builder(name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_cert(directory / "ca" / "ca.pem", cert)
    _write_key(directory / "ca" / "ca.key", key)
    return cert, key


def _write_trust_dir(
    certificates: Path, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey
) -> None:
    now = datetime.now(UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - timedelta(hours=1))
        .next_update(now + _TEN_YEARS)
        .sign(ca_key, hashes.SHA256())
    )
    digest = subject_hash(ca_cert.subject)
    _write_cert(certificates / f"{digest}.0", ca_cert)
    (certificates / f"{digest}.r0").write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path) -> None:
    """Create the CA, host and client credentials under ``directory``; what exists is kept
    (a cached PKI gets only the identities it lacks, signed by its own CA)."""
    if not (directory / "hostcert.pem").is_file():  # written last of the CA and host
        for sub in IDENTITIES:  # signed by a CA that is replaced now
            (directory / sub / "usercert.pem").unlink(missing_ok=True)
        for old in ("ca/ca.key", "hostkey.pem"):  # written mode 0400
            (directory / old).unlink(missing_ok=True)
        ca_cert, ca_key = _make_ca(directory)
        _write_trust_dir(directory / "certificates", ca_cert, ca_key)
        san: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        host = _issue(
            ca_cert,
            ca_key,
            HOST_SUBJECT,
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            san,
        )
        _write_cert(directory / "hostcert.pem", host[0])
        _write_key(directory / "hostkey.pem", host[1])
    else:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca" / "ca.pem").read_bytes())
        loaded = serialization.load_pem_private_key(
            (directory / "ca" / "ca.key").read_bytes(), None
        )
        assert isinstance(loaded, rsa.RSAPrivateKey)
        ca_key = loaded
    for sub, subject in IDENTITIES.items():
        cert_path = directory / sub / "usercert.pem"
        if cert_path.is_file():
            continue
        cert, key = _issue(ca_cert, ca_key, subject, [ExtendedKeyUsageOID.CLIENT_AUTH])
        # the certificate goes last: its presence marks a complete identity
        key_path = directory / sub / "userkey.pem"
        key_path.unlink(missing_ok=True)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
