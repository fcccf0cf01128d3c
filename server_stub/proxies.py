"""The stub's proxy store: users upload a proxy, pilots get proxies delegated from it.

Upload (what ``pilot-stub proxy-upload`` does): the stub makes a key and a certificate
request (``POST /api/proxies/request``), the user signs an RFC 3820 proxy for it with
their certificate or proxy and sends back only the certificates
(``PUT /api/proxies/request/{id}``). The stub stores it only when the chain leads to a CA
of its trust store (``pilot-stub serve --ca-dir/--ca-file``; with neither, every upload is
refused): RFC 3820 proxies, each signed by the next certificate, down to an end-entity
certificate that a trusted CA signed, all valid now. The chain signs the key the stub has
just made, so it proves its uploader holds a credential of its DN. The stored proxy is
also tied to the caller: only a caller with a verified client certificate may store one,
and the chain's DN must be the connection's; a bearer-token caller or one of an open stub
proves no DN and is refused (403). Delegation
to a job (``POST /api/jobs/{id}/proxy``, the job's token): the pilot sends a request for
a key of its own, the stub signs a new proxy with the owner's stored one. No private key
ever crosses the network.

Stored keys live unencrypted in the stub's SQLite file: this is a development stub.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pilot.errors import CredentialError
from pilot.grid import credentials, voms
from server_stub.store import Store, StoreError

log = logging.getLogger(__name__)

REQUEST_MAX_AGE = 300.0  # seconds an upload request stays open (as DIRAC's)
MAX_DELEGATED = timedelta(days=7)  # cap on one delegated proxy's lifetime


def load_trust(ca_dir: Path | None, ca_file: Path | None) -> tuple[x509.Certificate, ...]:
    """The CA certificates uploaded proxies must lead to: those of ``ca_file`` (a PEM
    bundle) and the hash links (``<hash>.0``) and ``*.pem`` files of ``ca_dir``. CRLs are
    not read. Raises :class:`CredentialError` naming the option to fix."""
    found: list[x509.Certificate] = []
    files: list[tuple[str, Path]] = []
    if ca_file is not None:
        files.append(("--ca-file", ca_file))
    if ca_dir is not None:
        if not ca_dir.is_dir():
            raise CredentialError(f"--ca-dir {ca_dir}: not a directory")
        names = sorted({*ca_dir.glob("*.[0-9]"), *ca_dir.glob("*.pem")})
        files.extend(("--ca-dir", path) for path in names)
    for option, path in files:
        try:
            found.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            raise CredentialError(f"{option} {path}: {exc.strerror or exc}") from None
        except ValueError:
            if option == "--ca-file":
                raise CredentialError(f"--ca-file {ca_file}: no PEM certificate in it") from None
            log.warning("%s: no PEM certificate in %s, skipped", option, path)
    cas = tuple(c for c in found if _is_ca(c))
    if files and not cas:
        raise CredentialError(
            f"{files[0][0]} {ca_file if ca_file is not None else ca_dir}: no CA certificate"
        )
    return cas


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def check_trusted(
    certs: Sequence[x509.Certificate],
    trusted: Sequence[x509.Certificate],
    now: datetime | None = None,
) -> None:
    """Raise :class:`CredentialError` unless the end-entity part of a proxy chain (whose
    proxies :func:`pilot.grid.voms.check_chain` already checked) leads to a CA of
    ``trusted``: the end-entity certificate is no CA, every certificate after it is a CA
    signed by the next, and the last is trusted or signed by a trusted CA valid now."""
    now = now or datetime.now(UTC)
    eec_at = next(i for i, cert in enumerate(certs) if voms.proxy_info(cert) is None)
    eec = certs[eec_at]
    who = voms.x509_slash_dn(eec.subject)
    if _is_ca(eec):
        raise CredentialError(f"the end-entity certificate {who} is a CA certificate")
    if not all(_is_ca(cert) for cert in certs[eec_at + 1 :]):
        raise CredentialError(f"a certificate after {who} in the chain is not a CA")
    last = certs[-1]
    anchor = last if last is not eec and last in trusted else None
    if anchor is None:
        anchor = next((ca for ca in trusted if _signed_by(last, ca)), None)
        if anchor is None:
            issuer = voms.x509_slash_dn(last.issuer)
            raise CredentialError(f"{who} is not issued by a CA this stub trusts ({issuer})")
    if not anchor.not_valid_before_utc <= now < anchor.not_valid_after_utc:
        raise CredentialError(f"the CA {voms.x509_slash_dn(anchor.subject)} is not valid now")


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # InvalidSignature, ValueError (names), TypeError (key type)
        return False
    return True


class ProxyStore:
    def __init__(self, store: Store, trusted: Sequence[x509.Certificate] = ()) -> None:
        self.store = store
        self.trusted = tuple(trusted)

    def new_upload(self) -> dict[str, Any]:
        key, request = credentials.new_proxy_request()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        request_id = secrets.token_urlsafe(16)
        self.store.add_proxy_request(request_id, key_pem, REQUEST_MAX_AGE)
        return {"id": request_id, "request": request.decode()}

    def complete_upload(
        self,
        request_id: str,
        chain_pem: str,
        caller: str | None,
    ) -> dict[str, Any]:
        # Only a caller with a verified DN (client certificate) may store a proxy: jobs
        # are owned by that DN only when submitted with it (a bearer token's jobs are owned
        # by "user-token", an open stub's by nobody), so a proxy stored by anyone else
        # would serve none of theirs - or, on an open stub, whoever claims the DN.
        if caller is None:
            raise StoreError(
                "proxy refused: no client certificate to tie it to; upload over HTTPS with"
                " your certificate or proxy as the client certificate",
                403,
            )
        if not caller.startswith("/"):
            raise StoreError(
                "proxy refused: a bearer token proves no DN; upload over HTTPS with your"
                " certificate or proxy as the client certificate",
                403,
            )
        if not self.trusted:
            raise StoreError(
                "proxy refused: this stub has no CA to check proxies against"
                " (start it with --ca-dir or --ca-file)",
                403,
            )
        key_pem = self.store.take_proxy_request(request_id, REQUEST_MAX_AGE)
        key = serialization.load_pem_private_key(key_pem, password=None)
        try:
            proxy, pem = credentials.proxy_from_chain(key, chain_pem.encode())  # type: ignore[arg-type]
            credentials.validate(proxy)
        except CredentialError as exc:
            raise StoreError(f"proxy refused: {exc}") from None
        try:
            check_trusted(proxy.certs, self.trusted)
        except CredentialError as exc:
            raise StoreError(f"proxy refused: {exc}", 403) from None
        owner = proxy.identity_slash
        if caller != owner:
            raise StoreError(f"a proxy of {owner} cannot be stored by {caller}", 403)
        not_after = proxy.not_after.timestamp()
        self.store.put_proxy(owner, pem, not_after)
        log.info("stored proxy of %s valid until %s", owner, proxy.not_after.isoformat())
        return {"identity": owner, "not_after": not_after, "limited": proxy.limited}

    def info(self, owner: str | None) -> dict[str, Any]:
        found = self.store.proxy_of(owner) if owner else None
        if found is None:
            raise StoreError(f"no proxy stored for {owner}", 404)
        return {"identity": owner, "not_after": found[1]}

    def available(self, owner: str | None) -> bool:
        """Whether the job's owner has a stored proxy that has not expired."""
        found = self.store.proxy_of(owner) if owner else None
        return found is not None and found[1] > datetime.now(UTC).timestamp()

    def delegate(
        self, job_id: int, request_pem: str, lifetime: float, limited: bool
    ) -> dict[str, Any]:
        """A new proxy of the job's owner for the key of ``request_pem``; ``chain`` is null
        (with a ``detail``) when there is nothing to delegate from."""
        owner = self.store.job(job_id)["owner"]
        found = self.store.proxy_of(owner) if owner else None
        if found is None:
            return {"chain": None, "detail": f"no proxy stored for the owner of job {job_id}"}
        pem, not_after = found
        if not_after <= datetime.now(UTC).timestamp():
            return {"chain": None, "detail": f"the stored proxy of {owner} has expired"}
        if not 60 <= lifetime <= 10 * 365 * 86400:
            raise StoreError(f"proxy lifetime {lifetime} s out of range")
        stored = credentials.proxy_from_pem(pem, f"stored proxy of {owner}")
        wanted = min(timedelta(seconds=lifetime), MAX_DELEGATED)
        try:
            chain = credentials.sign_proxy_request(
                stored, request_pem.encode(), wanted, limited=limited
            )
        except CredentialError as exc:
            raise StoreError(f"cannot delegate: {exc}") from None
        log.info("job %d: delegated a proxy of %s", job_id, owner)
        return {"chain": chain.decode()}
