"""The payload's own bearer token (stub backend): its owner's files, its own job's status.

For each job the pilot asks its backend (``payload_token``, with that job's credentials)
for a bearer token bound to the job and its owner. The pilot sends a random secret of its
own and the stub derives the token from it and stores only its hash, so a retry whose
answer was lost, or a renewal, gets the same token again (a renewal only moves its
expiry). The token is written into the job directory (mode 0600) and given to the payload
as ``BEARER_TOKEN_FILE``; the pilot's own token is never given. Its lifetime is the one
of the payload proxy (the job's wall time plus a margin, capped); a job that outlives it
has it renewed before it expires. The stub revokes it when the job ends; the pilot
removes the file when the payload ends, before the output is packed.

A backend without a token service (local, DIRAC) has no ``payload_token``: the payload
runs without ``BEARER_TOKEN_FILE``, as it does when its job has no owner identity. A
server that refuses or cannot be reached after the client's retries fails the job with
:data:`FAILED_MINOR`, as a failed proxy delegation does; so does a file that cannot be
written (disk full).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from pilot.backends.base import MatchedJob
from pilot.errors import PilotError
from pilot.grid import gridenv
from pilot.job.delegation import RenewedFile

log = logging.getLogger(__name__)

TOKEN_FILE = ".bearer-token"  # in the job directory; dot name: never globbed by "*"
FAILED_MINOR = "Failed to get payload token"

# (job, secret, lifetime) -> (token, expires as a Unix time), or None: the job has no owner
Minter = Callable[[MatchedJob, str, int], "tuple[str, float] | None"]


def minter_of(backend: object) -> Minter | None:
    """The backend's token service, if it has one."""
    found = getattr(backend, "payload_token", None)
    return found if callable(found) else None


class PayloadToken(RenewedFile):
    """One job's bearer token file: obtained, renewed in the background, removed."""

    def __init__(
        self,
        mint: Minter,
        job: MatchedJob,
        job_dir: Path,
        lifetime: int,
        renew_fraction: float = 0.25,
    ) -> None:
        super().__init__(job_dir / TOKEN_FILE)
        self.mint = mint
        self.job = job
        self.lifetime = lifetime
        self.renew_fraction = renew_fraction
        self.expires = 0.0
        self._secret = secrets.token_urlsafe(32)  # the same for every call of this job

    def obtain(self) -> bool:
        """Mint (or renew) the token and write the file; False when the job has no owner
        identity. ServerError/CredentialError on failure."""
        answer = self.mint(self.job, self._secret, self.lifetime)
        if answer is None:
            return False
        token, expires = answer
        self._write(lambda path: write_token(path, token))
        if self._stop.is_set():  # removed while the server answered: nothing written
            return True
        self.expires = expires
        left = int(expires - time.time())
        log.info("job %s: payload token, %d s left", self.job.job_id, left)  # never the token
        return True

    def start_renewal(self) -> None:
        self._start(self._renew_loop, f"token-renewal-{self.job.job_id}")

    def _renew_loop(self) -> None:
        span = max(60.0, self.expires - time.time())
        while True:
            left = self.expires - time.time()
            if self._stop.wait(max(1.0, left - span * self.renew_fraction)):
                return
            try:
                self.obtain()
            except PilotError as exc:  # the old token stays until it expires
                log.warning("job %s: payload token not renewed: %s", self.job.job_id, exc)
                if self._stop.wait(min(300.0, max(5.0, left / 4))):
                    return


def write_token(path: Path, token: str) -> None:
    """Write the token file with mode 0600, atomically replacing ``path``."""
    gridenv.write_private(path, (token + "\n").encode(), "token file")
