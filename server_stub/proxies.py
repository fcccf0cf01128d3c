"""The stub's proxy store: users upload a proxy, pilots get proxies delegated from it.

Upload (what ``pilot-stub proxy-upload`` does): the stub makes a key and a certificate
request (``POST /api/proxies/request``), the user signs an RFC 3820 proxy for it with
their certificate or proxy and sends back only the certificates
(``PUT /api/proxies/request/{id}``). The stored proxy is tied to the caller's identity:
with client certificates, its DN must be the one the caller connected with. Delegation
to a job (``POST /api/jobs/{id}/proxy``, the job's token): the pilot sends a request for
a key of its own, the stub signs a new proxy with the owner's stored one. No private key
ever crosses the network.

Stored keys live unencrypted in the stub's SQLite file: this is a development stub.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization

from pilot.errors import CredentialError
from pilot.grid import credentials
from server_stub.store import Store, StoreError

log = logging.getLogger(__name__)

REQUEST_MAX_AGE = 300.0  # seconds an upload request stays open (as DIRAC's)
MAX_DELEGATED = timedelta(days=7)  # cap on one delegated proxy's lifetime


class ProxyStore:
    def __init__(self, store: Store) -> None:
        self.store = store

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
        key_pem = self.store.take_proxy_request(request_id, REQUEST_MAX_AGE)
        key = serialization.load_pem_private_key(key_pem, password=None)
        try:
            proxy, pem = credentials.proxy_from_chain(key, chain_pem.encode())  # type: ignore[arg-type]
            credentials.validate(proxy)
        except CredentialError as exc:
            raise StoreError(f"proxy refused: {exc}") from None
        owner = proxy.identity_slash
        if caller and caller.startswith("/") and caller != owner:
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
