"""Grid credentials: X.509 proxies (load, validate, delegate), TLS contexts, bearer tokens.

A proxy file holds the proxy certificate, its private key, then the chain that issued
it (more proxies, the user's end-entity certificate, maybe CA certificates). Both RFC
3820 proxies (ProxyCertInfo extension) and legacy Globus proxies (``CN=proxy`` /
``CN=limited proxy``) are read; only RFC 3820 ones are accepted by stock OpenSSL for
TLS. The chain is checked for structure and signatures here; trust in the CA is the
TLS peer's business, through :func:`ssl_context` / :func:`server_ssl_context`.

:func:`ssl_context` is the pilot's TLS client credential: give it to httpx as
``verify=`` (httpx's ``cert=`` next to ``verify=<CA path>`` silently drops the client
certificate). Delegation (:func:`make_proxy`) makes RFC 3820 proxies for payloads.

Bearer tokens are found in the WLCG discovery order. Every failure is a
:class:`~pilot.errors.CredentialError` that names the file; neither key material nor
token values are ever logged or put in an exception message.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import ssl
import stat
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.utils import CryptographyDeprecationWarning

from pilot.errors import CredentialError
from pilot.grid import gridenv, voms
from pilot.grid.gridenv import DEFAULT_CA_DIR as DEFAULT_CA_DIR
from pilot.grid.gridenv import Token as Token
from pilot.grid.gridenv import ca_locations as ca_locations
from pilot.grid.gridenv import find_proxy as find_proxy
from pilot.grid.gridenv import find_token as find_token
from pilot.grid.gridenv import read_credential_file
from pilot.grid.gridenv import token_expiry as token_expiry
from pilot.grid.voms import ProxyInfo, VomsInfo
from pilot.grid.voms import x509_slash_dn as slash_dn

log = logging.getLogger(__name__)

PrivateKey = CertificateIssuerPrivateKeyTypes
ProxyKind = Literal["rfc3820", "legacy", "end-entity"]
Issuer = tuple[x509.Certificate, PrivateKey, Sequence[x509.Certificate]]

VOMS_EXTENSION_OID = x509.ObjectIdentifier(voms.VOMS_EXTENSION_OID)
CLOCK_SKEW = timedelta(minutes=5)  # tolerated "not yet valid"; proxies are backdated so much
_DIGESTLESS = (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
# DSA is not among them: grid CAs stopped issuing it long ago and cryptography deprecates
# it (importing its types prints a warning), so a DSA key is refused like any other kind.
_SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.*?-----END \1-----", re.DOTALL
)


@dataclass(frozen=True)
class Proxy:
    """A loaded credential: the certificate chain (leaf first) and the leaf's key."""

    path: Path | None
    certs: tuple[x509.Certificate, ...] = field(repr=False)
    key: PrivateKey = field(repr=False)
    identity: str  # end-entity DN, RFC 4514 (CN=testuser,OU=users,O=DIRACTest)
    identity_slash: str  # the same DN in OpenSSL/Globus form (/O=DIRACTest/OU=users/CN=testuser)
    not_after: datetime  # earliest notAfter in the chain
    voms: VomsInfo | None
    kind: ProxyKind  # kind of the leaf certificate
    limited: bool = False  # some proxy in the chain is a limited proxy

    def time_left(self, now: datetime | None = None) -> timedelta:
        return max(self.not_after - (now or datetime.now(UTC)), timedelta(0))

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"<in-memory credential of {self.identity_slash}>"


# --- loading -----------------------------------------------------------------------------


def load_proxy(path: Path, *, key_path: Path | None = None, strict: bool = False) -> Proxy:
    """Load a proxy file (cert, key, chain), or a certificate file plus ``key_path``.

    The file holding the key must not be readable by group or others: a warning,
    or :class:`CredentialError` when ``strict``.
    """
    path = Path(path)
    data = _read_credential_file(path, "proxy", holds_key=key_path is None, strict=strict)
    key_data = data
    if key_path is not None:
        key_data = _read_credential_file(key_path, "key", holds_key=True, strict=strict)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CredentialError(f"no readable certificate in {path}") from exc
    key = _load_key(key_data, key_path or path)
    proxy = _assemble(path, tuple(certs), key)
    left = _fmt_delta(proxy.time_left())
    log.debug("loaded %s %s of %s, %s left", proxy.kind, path, proxy.identity_slash, left)
    return proxy


def _read_credential_file(path: Path, what: str, *, holds_key: bool, strict: bool) -> bytes:
    data, mode = read_credential_file(path, what)
    if holds_key and mode & 0o077:
        message = f"{path} holds a private key but has mode {stat.S_IMODE(mode):04o}"
        if strict:
            raise CredentialError(message + "; it must not be readable by group or others")
        log.warning("%s; it should be 0600", message)
    return data


def _load_key(data: bytes, where: Path) -> PrivateKey:
    blocks = [m.group(0) for m in _KEY_BLOCK.finditer(data)]
    if not blocks:
        raise CredentialError(f"no private key in {where}")
    if len(blocks) > 1:
        raise CredentialError(f"more than one private key in {where}")
    if b"ENCRYPTED" in blocks[0]:
        raise CredentialError(f"the private key in {where} is encrypted (a proxy key must not be)")
    try:
        # The RSA consistency check costs ~0.1 s per load (2048-bit) and guards against
        # hostile keys; this is the pilot's own proxy, whose key OpenSSL also checks
        # against the certificate when it becomes the TLS credential.
        with warnings.catch_warnings():  # a DSA key is refused below, without a warning
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            key = serialization.load_pem_private_key(
                blocks[0], password=None, unsafe_skip_rsa_key_validation=True
            )
    except (ValueError, TypeError, NotImplementedError) as exc:
        # cryptography's messages never quote key bytes; still keep only the type.
        raise CredentialError(
            f"the private key in {where} cannot be read ({type(exc).__name__})"
        ) from None
    if not isinstance(key, _SIGNING_KEYS):
        raise CredentialError(
            f"the private key in {where} is a {type(key).__name__.removeprefix('_')}: "
            "a proxy needs an RSA, EC or EdDSA key"
        )
    return key


def _assemble(path: Path | None, certs: tuple[x509.Certificate, ...], key: PrivateKey) -> Proxy:
    where = str(path) if path else "the credential"
    if not certs:
        raise CredentialError(f"no certificate in {where}")
    if _spki(key.public_key()) != _spki(certs[0].public_key()):
        raise CredentialError(f"the private key in {where} does not match its certificate")
    infos = _check_chain(certs, where)
    eec = next(c for c, info in zip(certs, infos, strict=True) if info is None)
    leaf = infos[0]
    return Proxy(
        path=path,
        certs=certs,
        key=key,
        identity=eec.subject.rfc4514_string(),
        identity_slash=slash_dn(eec.subject),
        not_after=min(c.not_valid_after_utc for c in certs),
        voms=_find_voms(certs, where),
        kind=leaf.kind if leaf else "end-entity",
        limited=any(info.limited for info in infos if info),
    )


def _spki(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


# --- chain structure (the checks themselves live in pilot.grid.voms) -------------------------


def _check_chain(certs: Sequence[x509.Certificate], where: str) -> list[ProxyInfo | None]:
    try:
        return voms.check_chain(certs)
    except ValueError as exc:
        raise CredentialError(f"{where}: {exc}") from None


def _find_voms(certs: Sequence[x509.Certificate], where: str) -> VomsInfo | None:
    for cert in certs:
        try:
            ext = cert.extensions.get_extension_for_oid(VOMS_EXTENSION_OID)
        except x509.ExtensionNotFound:
            continue
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        try:
            return voms.parse_voms_extension(ext.value.value)
        except voms.DerError as exc:
            log.warning("ignoring unreadable VOMS attributes in %s: %s", where, exc)
    return None


# --- validation ----------------------------------------------------------------------------


def validate(
    proxy: Proxy, min_time_left: timedelta = timedelta(0), *, now: datetime | None = None
) -> None:
    """Raise :class:`CredentialError` unless every certificate is valid now, at least
    ``min_time_left`` is left, and the VOMS attributes (if any) have not expired."""
    now = now or datetime.now(UTC)
    for cert in proxy.certs:
        if cert.not_valid_before_utc > now + CLOCK_SKEW:
            raise CredentialError(
                f"proxy {proxy.where} is not valid before {_fmt_time(cert.not_valid_before_utc)}"
                f" ({slash_dn(cert.subject)})"
            )
    if proxy.not_after <= now:
        culprit = min(proxy.certs, key=lambda c: c.not_valid_after_utc)
        detail = "" if culprit is proxy.certs[0] else f" (its chain: {slash_dn(culprit.subject)})"
        raise CredentialError(
            f"proxy {proxy.where} expired at {_fmt_time(proxy.not_after)}{detail}"
        )
    left = proxy.time_left(now)
    if left < min_time_left:
        raise CredentialError(
            f"proxy {proxy.where} has only {_fmt_delta(left)} left,"
            f" {_fmt_delta(min_time_left)} required"
        )
    if proxy.voms is not None and proxy.voms.not_after <= now:
        raise CredentialError(
            f"VOMS attributes of proxy {proxy.where} expired at {_fmt_time(proxy.voms.not_after)}"
        )
    log.debug("proxy %s valid, %s left", proxy.where, _fmt_delta(left))


def _fmt_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_delta(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# --- TLS -------------------------------------------------------------------------------------


def ssl_context(
    credential: Proxy | None, ca_dir: Path | None = None, ca_file: Path | None = None
) -> ssl.SSLContext:
    """Client context: our proxy as the client certificate (with its chain), servers
    verified against ``ca_dir`` (OpenSSL hash links) and/or ``ca_file``, or the system
    store when neither is given. Pass it to httpx as ``verify=`` (not ``cert=``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    _load_trust(ctx, ca_dir, ca_file)
    if credential is not None:
        _load_client_credential(ctx, credential)
    return ctx


def server_ssl_context(
    cert: Path,
    key: Path | None = None,
    ca_dir: Path | None = None,
    ca_file: Path | None = None,
    require_client_cert: bool = True,
) -> ssl.SSLContext:
    """Server context that accepts (and with ``require_client_cert`` demands) client
    certificates, proxies included, issued under ``ca_dir`` / ``ca_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"cannot load server certificate {cert}: {exc}") from exc
    _load_trust(ctx, ca_dir, ca_file)
    return ctx


def _load_trust(ctx: ssl.SSLContext, ca_dir: Path | None, ca_file: Path | None) -> None:
    if ca_dir is None and ca_file is None:
        server_side = ctx.protocol == ssl.PROTOCOL_TLS_SERVER
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH)
        return
    if ca_dir is not None:
        if not Path(ca_dir).is_dir():
            raise CredentialError(f"CA directory {ca_dir} does not exist")
        if not any(Path(ca_dir).glob("*.[0-9]")):
            log.warning("CA directory %s has no OpenSSL hash links (<hash>.0)", ca_dir)
    try:
        ctx.load_verify_locations(cafile=ca_file, capath=ca_dir)
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(
            f"cannot load CA certificates from {ca_file or ca_dir}: {exc}"
        ) from exc


def _load_client_credential(ctx: ssl.SSLContext, proxy: Proxy) -> None:
    """Straight from the proxy file when it is one (OpenSSL reads cert, key and chain
    from it in any order); else through a private temporary file removed at once."""
    if proxy.path is not None:
        try:
            ctx.load_cert_chain(certfile=proxy.path)
            return
        except (OSError, ssl.SSLError) as exc:
            log.debug("proxy %s not usable directly (%s), using a copy", proxy.path, exc)
    with tempfile.TemporaryDirectory(prefix="pilot-cred-") as private_dir:  # mode 0700
        copy = Path(private_dir) / "credential.pem"
        _write_new_file(copy, _proxy_pem(proxy.certs, proxy.key))
        try:
            ctx.load_cert_chain(certfile=copy)
        except ssl.SSLError as exc:
            raise CredentialError(f"OpenSSL refused credential {proxy.where}: {exc}") from exc


def peer_der_chain(sock: ssl.SSLSocket | ssl.SSLObject) -> list[bytes]:
    """DER certificates of the peer's verified chain, leaf first (the leaf alone when
    this Python cannot give the chain)."""
    getter = getattr(sock, "get_verified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(sock, "_sslobj", sock), "get_verified_chain", None)
    if getter is None:
        leaf = sock.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    chain: list[Any] = getter() or []
    encoding = getattr(ssl, "ENCODING_DER", 2)  # _ssl.ENCODING_DER
    return [bytes(cert.public_bytes(encoding)) for cert in chain]


def identity_from_peer_chain(der_certs: Sequence[bytes], *, slash: bool = False) -> str:
    """End-entity DN (RFC 4514, or slash form) of a verified peer chain, leaf first:
    the subject of the first certificate that is not a proxy."""
    if not der_certs:
        raise CredentialError("the peer presented no certificate")
    for der in der_certs:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CredentialError("the peer chain holds an unreadable certificate") from exc
        if voms.proxy_info(cert) is None:
            return slash_dn(cert.subject) if slash else cert.subject.rfc4514_string()
    raise CredentialError("the peer chain has no end-entity certificate")


# --- delegation -----------------------------------------------------------------------------


def make_proxy(
    issuer: Proxy | Issuer,
    lifetime: timedelta,
    *,
    rfc3820: bool = True,
    limited: bool = False,
    key_bits: int = 2048,
    now: datetime | None = None,
) -> bytes:
    """A new proxy signed by ``issuer``, as PEM (new cert, new key, issuer chain).

    It never outlives any certificate of its issuer's chain. A proxy of a limited
    proxy is limited; an RFC 3820 proxy is not made from a legacy one, nor the reverse.
    """
    if not 1024 <= key_bits <= 16384:
        raise ValueError(f"unsupported key size {key_bits}")
    _check_lifetime(lifetime)
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    certs = _delegate(issuer, new_key.public_key(), lifetime, rfc3820, limited, now)
    return _proxy_pem(certs, new_key)


def sign_proxy_request(
    issuer: Proxy | Issuer,
    request_pem: bytes,
    lifetime: timedelta,
    *,
    limited: bool = False,
    now: datetime | None = None,
) -> bytes:
    """Delegation without moving a private key: an RFC 3820 proxy for the key of a PEM
    certificate request, signed by ``issuer``. Returns PEM certificates, the new proxy
    first, then the issuer's chain (no key). The request's subject is ignored."""
    _check_lifetime(lifetime)
    try:
        request = x509.load_pem_x509_csr(request_pem)
    except ValueError as exc:
        raise CredentialError("the proxy request is not a PEM certificate request") from exc
    if not request.is_signature_valid:
        raise CredentialError("the proxy request is not signed by its own key")
    public_key = request.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CredentialError(f"unsupported key type {type(public_key).__name__} in the request")
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
        raise CredentialError(
            f"the requested proxy key has {public_key.key_size} bits, 2048 needed"
        )
    certs = _delegate(issuer, public_key, lifetime, True, limited, now)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def new_proxy_request(key_bits: int = 2048) -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh key and a PEM certificate request for it (what a delegation asks to sign)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "proxy request")])
    request = (
        x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    )
    return key, request.public_bytes(serialization.Encoding.PEM)


def proxy_from_chain(key: PrivateKey, chain_pem: bytes) -> tuple[Proxy, bytes]:
    """The proxy a delegation returned (PEM certificates, leaf first) completed with our
    ``key``: checked (the leaf is for our key, the chain is a valid proxy chain) and as
    the PEM of a proxy file (leaf, key, rest of the chain)."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError as exc:
        raise CredentialError("the delegated proxy holds no readable certificate") from exc
    proxy = _assemble(None, certs, key)
    if proxy.kind == "end-entity":
        raise CredentialError("the delegated credential is not a proxy")
    return proxy, _proxy_pem(certs, key)


def proxy_from_pem(data: bytes, where: str = "the credential") -> Proxy:
    """A proxy (certificates and unencrypted key) held in memory, checked like a file."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise CredentialError(f"no readable certificate in {where}") from exc
    return _assemble(None, certs, _load_key(data, Path(where)))


def proxy_pem(proxy: Proxy) -> bytes:
    """``proxy`` as the PEM of a proxy file (leaf, key, chain)."""
    return _proxy_pem(proxy.certs, proxy.key)


def load_user_credential(cert: Path, key: Path, passphrase: bytes | None = None) -> Issuer:
    """A user certificate and its (possibly encrypted) key, to sign proxies with."""
    cert_data, _ = read_credential_file(cert, "certificate")
    key_data = _read_credential_file(key, "key", holds_key=True, strict=True)
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError as exc:
        raise CredentialError(f"no readable certificate in {cert}") from exc
    try:
        loaded = serialization.load_pem_private_key(key_data, password=passphrase)
    except TypeError:
        raise CredentialError(f"the private key in {key} needs a passphrase") from None
    except ValueError:
        raise CredentialError(
            f"the private key in {key} cannot be read (wrong passphrase?)"
        ) from None
    if not isinstance(loaded, _SIGNING_KEYS):
        raise CredentialError(f"the private key in {key} cannot sign ({type(loaded).__name__})")
    return _issuer_parts((certs[0], loaded, tuple(certs[1:])))


def issuer_as_proxy(issuer: Issuer) -> Proxy:
    """A certificate and key (a user's) as an in-memory credential, e.g. for TLS."""
    cert, key, chain = _issuer_parts(issuer)
    return _assemble(None, (cert, *chain), key)


def key_is_encrypted(key: Path) -> bool:
    data, _ = read_credential_file(key, "key")
    return b"ENCRYPTED" in data


def _check_lifetime(lifetime: timedelta) -> None:
    if lifetime <= timedelta(0):
        raise ValueError("proxy lifetime must be positive")


def _delegate(
    issuer: Proxy | Issuer,
    public_key: Any,
    lifetime: timedelta,
    rfc3820: bool,
    limited: bool,
    now: datetime | None,
) -> tuple[x509.Certificate, ...]:
    """The new proxy certificate for ``public_key`` followed by the issuer's chain."""
    cert, key, chain = _issuer_parts(issuer)
    certs = (cert, *chain)
    infos = _check_chain(certs, "the issuing credential")
    limited = limited or any(i.limited for i in infos if i)
    _check_delegation(infos, rfc3820)
    now = now or datetime.now(UTC)
    chain_end = min(c.not_valid_after_utc for c in certs)
    if chain_end <= now:
        raise CredentialError(
            f"cannot delegate from {slash_dn(cert.subject)}: expired at {_fmt_time(chain_end)}"
        )
    new_cert = _sign_proxy(
        cert, key, public_key, rfc3820, limited, now, min(now + lifetime, chain_end)
    )
    kind = ("limited " if limited else "") + ("RFC 3820" if rfc3820 else "legacy")
    until = _fmt_time(new_cert.not_valid_after_utc)
    log.info("delegated %s proxy %s valid until %s", kind, slash_dn(new_cert.subject), until)
    return (new_cert, *certs)


def _issuer_parts(issuer: Proxy | Issuer) -> Issuer:
    if isinstance(issuer, Proxy):
        return issuer.certs[0], issuer.key, issuer.certs[1:]
    cert, key, chain = issuer
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CredentialError("the issuing key does not match the issuing certificate")
    return cert, key, tuple(chain)


def _check_delegation(infos: Sequence[ProxyInfo | None], rfc3820: bool) -> None:
    top = infos[0]
    if top is not None and (top.kind == "rfc3820") != rfc3820:
        wanted = "an RFC 3820" if rfc3820 else "a legacy"
        raise CredentialError(f"cannot make {wanted} proxy from a {top.kind} proxy")
    try:
        voms.check_path_lengths(infos, extra=1)
    except ValueError as exc:
        raise CredentialError(f"cannot delegate: {exc}") from None


def _sign_proxy(
    cert: x509.Certificate,
    key: PrivateKey,
    public_key: Any,
    rfc3820: bool,
    limited: bool,
    now: datetime,
    not_after: datetime,
) -> x509.Certificate:
    serial = secrets.randbits(63) | (1 << 32)  # positive, at least 10 digits
    cn = str(serial) if rfc3820 else ("limited proxy" if limited else "proxy")
    builder = (
        x509.CertificateBuilder()
        .subject_name(voms.proxy_subject(cert.subject, cn))
        .issuer_name(cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(max(now - CLOCK_SKEW, cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
    )
    if rfc3820:
        policy = voms.LIMITED_POLICY if limited else voms.INHERIT_ALL_POLICY
        value = voms.encode_proxy_cert_info(policy)
        builder = builder.add_extension(
            x509.UnrecognizedExtension(voms.PROXY_CERT_INFO_OID, value), critical=True
        )
    return builder.sign(key, None if isinstance(key, _DIGESTLESS) else hashes.SHA256())


def _proxy_pem(certs: Sequence[x509.Certificate], key: PrivateKey) -> bytes:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    return pems[0] + key_pem + b"".join(pems[1:])


def write_proxy(path: Path, pem: bytes) -> None:
    """Write a proxy file with mode 0600, atomically replacing ``path``."""
    path = Path(path)
    gridenv.write_private(path, pem, "proxy")
    log.debug("wrote proxy %s", path)


def _write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
