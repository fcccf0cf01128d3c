"""The X.509 structures of grid credentials: a small DER reader and writer, DNs in
slash form, RFC 3820 / legacy proxy chains, and VOMS attribute certificates.

Pure functions on bytes and certificates, no I/O: :mod:`pilot.grid.credentials` does the
loading, validation against the clock, TLS and delegation on top of them.

:mod:`cryptography` does not expose the extensions that grid proxies carry (RFC 3820
ProxyCertInfo, the VOMS attribute certificate), so this module reads just enough DER
to get at them. The reader is strict about lengths and never reads past its buffer;
every malformed input raises :class:`DerError` (a ``ValueError``), nothing else.

VOMS attributes are read, not verified: the AC signature is the business of the
services that authorize on it. They tell the pilot which VO and groups its proxy
speaks for, and until when.

The VOMS proxy extension (OID 1.3.6.1.4.1.8005.100.100.5) holds a SEQUENCE OF
SEQUENCE OF AttributeCertificate (RFC 5755); the FQANs sit in the AC attribute
1.3.6.1.4.1.8005.100.100.4 as an IetfAttrSyntax whose policy authority is the URI
``<vo>://<host>:<port>`` and whose values are octet strings such as
``/dteam/Role=NULL/Capability=NULL``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

VOMS_EXTENSION_OID = "1.3.6.1.4.1.8005.100.100.5"
VOMS_FQAN_ATTRIBUTE_OID = "1.3.6.1.4.1.8005.100.100.4"

# Universal tags (class 0) and the context-specific ones used below.
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
OID = 0x06
UTF8_STRING = 0x0C
SEQUENCE = 0x30
SET = 0x31
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
CONTEXT_0_CONSTRUCTED = 0xA0
CONTEXT_4_CONSTRUCTED = 0xA4  # GeneralName directoryName (explicit Name)
CONTEXT_6_PRIMITIVE = 0x86  # GeneralName uniformResourceIdentifier

_STRING_TAGS = frozenset({0x0C, 0x12, 0x13, 0x14, 0x16, 0x1A, 0x1C, 0x1E})
_MAX_LENGTH = 1 << 24  # a proxy extension is never anywhere near 16 MiB

# OpenSSL's short names, as the slash form of a DN (X509_NAME_oneline) prints them.
SHORT_NAMES: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.46": "dnQualifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}


class DerError(ValueError):
    """The bytes are not the DER structure that was expected."""


@dataclass(frozen=True)
class Tlv:
    """One DER element: its identifier octet, its content, and where it ended."""

    tag: int
    content: bytes
    end: int

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def read_tlv(data: bytes, offset: int = 0) -> Tlv:
    """Read the element that starts at ``offset`` (low tag numbers only, definite lengths)."""
    if offset + 2 > len(data):
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tag numbers are not used in these structures")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise DerError("bad length field")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if length > _MAX_LENGTH or pos + length > len(data):
        raise DerError("element runs past the end of its buffer")
    return Tlv(tag, data[pos : pos + length], pos + length)


def expect(data: bytes, tag: int) -> bytes:
    """The content of ``data``, which must be exactly one element with ``tag``."""
    tlv = read_tlv(data)
    if tlv.tag != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    if tlv.end != len(data):
        raise DerError("trailing bytes after element")
    return tlv.content


def children(content: bytes) -> Iterator[Tlv]:
    """The elements packed one after another in ``content``."""
    offset = 0
    while offset < len(content):
        tlv = read_tlv(content, offset)
        yield tlv
        offset = tlv.end


def decode_oid(content: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content octets."""
    if not content or content[-1] & 0x80:
        raise DerError("bad object identifier")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def decode_integer(content: bytes) -> int:
    if not content:
        raise DerError("empty integer")
    return int.from_bytes(content, "big", signed=True)


def decode_string(tlv: Tlv) -> str:
    """Text of a directory string, IA5String or OCTET STRING element."""
    if tlv.tag == 0x1E:  # BMPString
        return tlv.content.decode("utf-16-be", errors="replace")
    if tlv.tag == 0x1C:  # UniversalString
        return tlv.content.decode("utf-32-be", errors="replace")
    if tlv.tag in _STRING_TAGS or tlv.tag in (OCTET_STRING, CONTEXT_6_PRIMITIVE):
        return tlv.content.decode("utf-8", errors="replace")
    raise DerError(f"tag 0x{tlv.tag:02x} is not a string")


def decode_time(tlv: Tlv) -> datetime:
    """A UTC ``datetime`` from a GeneralizedTime or UTCTime (``Z`` form, as DER requires)."""
    text = tlv.content.decode("ascii", errors="replace")
    if not text.endswith("Z"):
        raise DerError("time is not in UTC")
    text = text[:-1].split(".", 1)[0]  # fractional seconds carry nothing we need
    try:
        if tlv.tag == GENERALIZED_TIME:
            stamp = datetime.strptime(text, "%Y%m%d%H%M%S")
        elif tlv.tag == UTC_TIME:
            stamp = datetime.strptime(text, "%y%m%d%H%M%S")
            if stamp.year >= 2050:  # RFC 5280: two-digit years 50..99 are 19xx
                stamp = stamp.replace(year=stamp.year - 100)
        else:
            raise DerError(f"tag 0x{tlv.tag:02x} is not a time")
    except ValueError as exc:
        raise DerError(f"bad time {text!r}") from exc
    return stamp.replace(tzinfo=UTC)


def slash_dn(rdns: list[list[tuple[str, str]]]) -> str:
    """OpenSSL/Globus form of a DN given as RDNs of (dotted OID, value), in DER order."""
    parts = []
    for rdn in rdns:
        parts.append("+".join(f"{SHORT_NAMES.get(oid, oid)}={value}" for oid, value in rdn))
    return "".join("/" + part for part in parts)


def name_rdns(name_der: bytes) -> list[list[tuple[str, str]]]:
    """The RDNs of a DER ``Name`` (SEQUENCE OF SET OF SEQUENCE {OID, value})."""
    rdns = []
    for rdn in children(expect(name_der, SEQUENCE)):
        if rdn.tag != SET:
            raise DerError("RDN is not a SET")
        pairs = []
        for atv in children(rdn.content):
            oid_tlv, value_tlv = _two(atv, SEQUENCE)
            if oid_tlv.tag != OID:
                raise DerError("attribute type is not an OID")
            pairs.append((decode_oid(oid_tlv.content), decode_string(value_tlv)))
        rdns.append(pairs)
    return rdns


def _two(tlv: Tlv, tag: int) -> tuple[Tlv, Tlv]:
    if tlv.tag != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    items = list(children(tlv.content))
    if len(items) != 2:
        raise DerError(f"expected 2 elements, found {len(items)}")
    return items[0], items[1]


@dataclass(frozen=True)
class VomsInfo:
    """What a proxy's first VOMS attribute certificate says (unverified)."""

    vo: str
    fqans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    issuer: str | None  # slash-form DN of the VOMS server that signed the AC
    uri: str | None  # host:port of that server

    @property
    def primary_fqan(self) -> str | None:
        return self.fqans[0] if self.fqans else None

    def time_left(self, now: datetime | None = None) -> timedelta:
        left = self.not_after - (now or datetime.now(UTC))
        return max(left, timedelta(0))


def parse_voms_extension(value: bytes) -> VomsInfo:
    """The first AC in the value of a VOMS proxy extension; raises :class:`DerError`."""
    outer = expect(value, SEQUENCE)
    for inner in children(outer):
        if inner.tag != SEQUENCE:
            raise DerError("VOMS extension holds no sequence of ACs")
        for ac in children(inner.content):
            return parse_attribute_certificate(ac)
    raise DerError("VOMS extension holds no attribute certificate")


def parse_attribute_certificate(ac: Tlv) -> VomsInfo:
    """VO, FQANs, validity and issuer of one RFC 5755 AttributeCertificate."""
    if ac.tag != SEQUENCE:
        raise DerError("attribute certificate is not a SEQUENCE")
    acinfo = next(iter(children(ac.content)), None)
    if acinfo is None or acinfo.tag != SEQUENCE:
        raise DerError("attribute certificate has no AttributeCertificateInfo")
    fields = list(children(acinfo.content))
    if fields and fields[0].tag == INTEGER:
        fields = fields[1:]  # version v2
    if len(fields) < 6:
        raise DerError("AttributeCertificateInfo is too short")
    _holder, issuer, _alg, _serial, validity, attributes = fields[:6]
    start, end = _two(validity, SEQUENCE)
    vo, uri, fqans = _fqan_attribute(attributes)
    return VomsInfo(
        vo=vo,
        fqans=fqans,
        not_before=decode_time(start),
        not_after=decode_time(end),
        issuer=_issuer_dn(issuer),
        uri=uri,
    )


def _issuer_dn(issuer: Tlv) -> str | None:
    """The directoryName in AttCertIssuer (v2Form ``[0]`` or bare GeneralNames)."""
    names = issuer.content
    if issuer.tag == CONTEXT_0_CONSTRUCTED:
        first = next(iter(children(issuer.content)), None)
        if first is None or first.tag != SEQUENCE:
            return None
        names = first.content
    for general_name in children(names):
        if general_name.tag == CONTEXT_4_CONSTRUCTED:
            return slash_dn(name_rdns(general_name.content))
    return None


def _fqan_attribute(attributes: Tlv) -> tuple[str, str | None, tuple[str, ...]]:
    """(vo, host:port, fqans) from the AC's attribute list."""
    if attributes.tag != SEQUENCE:
        raise DerError("AC attributes are not a SEQUENCE")
    for attribute in children(attributes.content):
        oid_tlv, values = _two(attribute, SEQUENCE)
        if oid_tlv.tag != OID or decode_oid(oid_tlv.content) != VOMS_FQAN_ATTRIBUTE_OID:
            continue
        if values.tag != SET:
            raise DerError("attribute values are not a SET")
        for syntax in children(values.content):
            return _ietf_attr_syntax(syntax)
    raise DerError("AC carries no VOMS FQAN attribute")


def _ietf_attr_syntax(syntax: Tlv) -> tuple[str, str | None, tuple[str, ...]]:
    if syntax.tag != SEQUENCE:
        raise DerError("IetfAttrSyntax is not a SEQUENCE")
    authority: str | None = None
    fqans: tuple[str, ...] = ()
    for part in children(syntax.content):
        if part.tag == CONTEXT_0_CONSTRUCTED:
            for general_name in children(part.content):
                if general_name.tag == CONTEXT_6_PRIMITIVE:
                    authority = decode_string(general_name)
        elif part.tag == SEQUENCE:
            fqans = tuple(decode_string(v) for v in children(part.content))
    if authority and "://" in authority:
        vo, uri = authority.split("://", 1)
        return vo, uri or None, fqans
    vo = fqans[0].split("/")[1] if fqans and fqans[0].startswith("/") else ""
    if not vo:
        raise DerError("cannot tell the VO: no policy authority and no FQAN")
    return vo, None, fqans


# --- writing, and the RFC 3820 ProxyCertInfo extension ---------------------------------


def der_encode(tag: int, content: bytes) -> bytes:
    """One DER element (low tag number, definite length)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def encode_oid(dotted: str) -> bytes:
    """DER OBJECT IDENTIFIER element for a dotted OID string."""
    arcs = [int(arc) for arc in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] >= 40):
        raise DerError(f"bad object identifier {dotted!r}")
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        septets = [arc & 0x7F]
        arc >>= 7
        while arc:
            septets.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(septets))
    return der_encode(OID, bytes(body))


def encode_proxy_cert_info(policy_oid: str, path_len: int | None = None) -> bytes:
    """ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
    proxyPolicy SEQUENCE { policyLanguage OID } }"""
    length = b""
    if path_len is not None:
        length = der_encode(INTEGER, path_len.to_bytes(path_len.bit_length() // 8 + 1, "big"))
    return der_encode(SEQUENCE, length + der_encode(SEQUENCE, encode_oid(policy_oid)))


def parse_proxy_cert_info(raw: bytes) -> tuple[int | None, str]:
    """(pCPathLenConstraint, policy language OID) from a ProxyCertInfo value."""
    items = list(children(expect(raw, SEQUENCE)))
    path_len = None
    if items and items[0].tag == INTEGER:
        path_len = decode_integer(items[0].content)
        items = items[1:]
    if len(items) != 1 or items[0].tag != SEQUENCE:
        raise DerError("ProxyPolicy missing")
    policy = next(iter(children(items[0].content)), None)
    if policy is None or policy.tag != OID:
        raise DerError("ProxyPolicy has no policy language")
    return path_len, decode_oid(policy.content)


# --- proxy certificates and chain structure ----------------------------------------------

PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
GSI3_PROXY_CERT_INFO_OID = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")  # pre-RFC draft
INHERIT_ALL_POLICY = "1.3.6.1.5.5.7.21.1"  # id-ppl-inheritAll
LIMITED_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"  # Globus limited-proxy policy language
LEGACY_CNS = {"proxy": False, "limited proxy": True}  # legacy Globus CN -> limited


class ChainError(ValueError):
    """A certificate chain that is not a well-formed proxy chain."""


@dataclass(frozen=True)
class ProxyInfo:
    """How a certificate is a proxy."""

    kind: Literal["rfc3820", "legacy"]
    limited: bool
    path_len: int | None  # RFC 3820 pCPathLenConstraint


def x509_slash_dn(name: x509.Name) -> str:
    """A ``cryptography`` Name in slash form, e.g. ``/O=DIRACTest/OU=users/CN=testuser``."""
    return slash_dn([[(a.oid.dotted_string, str(a.value)) for a in rdn] for rdn in name.rdns])


def proxy_subject(issuer: x509.Name, cn: str) -> x509.Name:
    """A proxy's subject: its issuer's subject plus one CN."""
    last = x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return x509.Name([*issuer.rdns, last])


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except ValueError as exc:
        raise ChainError(f"certificate {x509_slash_dn(cert.subject)}: {exc}") from exc


def proxy_info(cert: x509.Certificate) -> ProxyInfo | None:
    """RFC 3820 (ProxyCertInfo) or legacy Globus (issuer DN + ``CN=proxy`` or
    ``CN=limited proxy``) proxy, or None for any other certificate."""
    extensions = _extensions(cert)
    try:
        pci = extensions.get_extension_for_oid(PROXY_CERT_INFO_OID)
    except x509.ExtensionNotFound:
        if any(ext.oid == GSI3_PROXY_CERT_INFO_OID for ext in extensions):
            raise ChainError(
                f"{x509_slash_dn(cert.subject)} is a GSI-3 draft proxy, which is not"
                " supported: make an RFC 3820 proxy instead"
            ) from None
        return _legacy_info(cert)
    raw = pci.value.value if isinstance(pci.value, x509.UnrecognizedExtension) else b""
    try:
        path_len, policy = parse_proxy_cert_info(raw)
    except DerError as exc:
        raise ChainError(f"bad ProxyCertInfo in {x509_slash_dn(cert.subject)}: {exc}") from exc
    return ProxyInfo("rfc3820", policy == LIMITED_POLICY, path_len)


def _legacy_info(cert: x509.Certificate) -> ProxyInfo | None:
    rdns = cert.subject.rdns
    if not rdns or x509.Name(rdns[:-1]) != cert.issuer:
        return None
    last = list(rdns[-1])
    if len(last) != 1 or last[0].oid != NameOID.COMMON_NAME:
        return None
    limited = LEGACY_CNS.get(str(last[0].value))
    return None if limited is None else ProxyInfo("legacy", limited, None)


def check_chain(certs: Sequence[x509.Certificate]) -> list[ProxyInfo | None]:
    """Check a chain, leaf first: proxies come first, each named after and signed by
    the next certificate; then the end-entity certificate and anything after it, each
    signed by the next. Returns each certificate's :class:`ProxyInfo` (None: no proxy)."""
    infos = [proxy_info(c) for c in certs]
    eec_at = next((i for i, info in enumerate(infos) if info is None), len(certs))
    if eec_at == len(certs):
        raise ChainError("the chain stops at a proxy: its issuer is missing")
    if any(info is not None for info in infos[eec_at:]):
        raise ChainError("proxy certificate after the end-entity certificate")
    for i in range(eec_at):
        _check_proxy_shape(certs[i], certs[i + 1])
    for cert, issuer in itertools.pairwise(certs):
        _check_signed_by(cert, issuer)
    check_path_lengths(infos)
    return infos


def _check_proxy_shape(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    rdns = cert.subject.rdns
    if x509.Name(rdns[:-1]) != issuer.subject or len(rdns[-1]) != 1:
        raise ChainError(
            f"proxy {x509_slash_dn(cert.subject)} is not named after its issuer plus one CN"
        )
    try:
        constraints = _extensions(cert).get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return
    if constraints.value.ca:
        raise ChainError(f"proxy {x509_slash_dn(cert.subject)} claims to be a CA")


def _check_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception as exc:  # InvalidSignature, ValueError (names), TypeError (key type)
        raise ChainError(
            f"broken chain: {x509_slash_dn(cert.subject)} is not signed by the next"
            f" certificate {x509_slash_dn(issuer.subject)} ({type(exc).__name__})"
        ) from None


def check_path_lengths(infos: Sequence[ProxyInfo | None], extra: int = 0) -> None:
    """A proxy whose pCPathLenConstraint is n may have at most n proxies below it
    (``extra``: proxies about to be added below the leaf)."""
    for below, info in enumerate(infos):
        if info is None:
            break
        if info.path_len is not None and below + extra > info.path_len:
            raise ChainError("the proxy chain is longer than a path length constraint allows")
