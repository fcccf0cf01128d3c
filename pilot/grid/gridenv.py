"""Where a worker node keeps the grid's credentials: the proxy, the CAs, bearer tokens.

Discovery only, in the standard orders, with no X.509 parsing, so that a pilot that has
no proxy never pays for importing ``cryptography``; :mod:`pilot.grid.credentials` loads and
checks what is found here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pilot.errors import CredentialError

log = logging.getLogger(__name__)

DEFAULT_CA_DIR = Path("/etc/grid-security/certificates")
MAX_CREDENTIAL_FILE = 1 << 20


@dataclass(frozen=True, repr=False)
class Token:
    """A bearer token and where it was found; its value never shows in repr or str."""

    value: str
    source: str  # BEARER_TOKEN, BEARER_TOKEN_FILE=<path>, or the discovered file

    def __repr__(self) -> str:
        return f"Token(source={self.source!r}, value=<{len(self.value)} characters hidden>)"

    __str__ = __repr__


# --- discovery ---------------------------------------------------------------------------


def find_proxy(env: Mapping[str, str] | None = None, *, uid: int | None = None) -> Path | None:
    """``$X509_USER_PROXY`` as given (even if missing: loading then says why), else
    ``/tmp/x509up_u<uid>`` when it exists, else None."""
    env = os.environ if env is None else env
    configured = env.get("X509_USER_PROXY", "").strip()
    if configured:
        return Path(configured)
    default = Path(f"/tmp/x509up_u{os.getuid() if uid is None else uid}")
    return default if default.exists() else None


def ca_locations(
    env: Mapping[str, str] | None = None, *, default_dir: Path = DEFAULT_CA_DIR
) -> tuple[Path | None, Path | None]:
    """(CA hash directory, CA bundle): ``$X509_CERT_DIR`` else ``default_dir`` if it
    exists; the bundle from ``$X509_CERT_FILE`` (the variable XRootD reads)."""
    env = os.environ if env is None else env
    cert_dir = env.get("X509_CERT_DIR", "").strip()
    ca_dir = Path(cert_dir) if cert_dir else (default_dir if default_dir.is_dir() else None)
    cert_file = env.get("X509_CERT_FILE", "").strip()
    return ca_dir, Path(cert_file) if cert_file else None


# --- bearer tokens ---------------------------------------------------------------------------


def find_token(env: Mapping[str, str] | None = None, *, uid: int | None = None) -> Token | None:
    """A bearer token in the WLCG discovery order: ``$BEARER_TOKEN``, the file named
    by ``$BEARER_TOKEN_FILE``, ``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``.

    An explicitly named file that cannot be read is an error, not a reason to fall
    back to another token.
    """
    env = os.environ if env is None else env
    value = env.get("BEARER_TOKEN", "").strip()
    if value:
        return _found(Token(value, "BEARER_TOKEN"))
    named = env.get("BEARER_TOKEN_FILE", "").strip()
    if named:
        return _found(_read_token(Path(named), f"BEARER_TOKEN_FILE={named}"))
    name = f"bt_u{os.getuid() if uid is None else uid}"
    runtime_dir = env.get("XDG_RUNTIME_DIR", "").strip()
    candidates = [Path(runtime_dir) / name] if runtime_dir else []
    for candidate in [*candidates, Path("/tmp") / name]:
        if candidate.exists():
            return _found(_read_token(candidate, str(candidate)))
    log.debug("no bearer token found")
    return None


def _found(token: Token) -> Token:
    log.debug("bearer token from %s", token.source)
    return token


def read_credential_file(path: Path, what: str) -> tuple[bytes, int]:
    """The bytes and mode of a small regular file holding a credential."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_CREDENTIAL_FILE + 1)
    except OSError as exc:
        raise CredentialError(f"{what} file {path} is not readable: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise CredentialError(f"{what} file {path} is not a regular file")
    if len(data) > MAX_CREDENTIAL_FILE:
        raise CredentialError(f"{what} file {path} is too large to be a {what}")
    return data, mode


def _read_token(path: Path, source: str) -> Token:
    data, mode = read_credential_file(path, "token")
    value = data.decode("utf-8", errors="replace").strip()
    if not value:
        raise CredentialError(f"token file {path} is empty")
    if mode & 0o077:
        log.warning("token file %s has mode %04o; it should be 0600", path, stat.S_IMODE(mode))
    return Token(value, source)


def token_expiry(token: Token | str) -> datetime | None:
    """The ``exp`` claim of a JWT (signature not checked), or None when the token is
    not a JWT or has no expiry."""
    value = token.value if isinstance(token, Token) else token
    parts = value.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        log.debug("token looks like a JWT but its payload does not decode")
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def write_private(path: Path, data: bytes, what: str) -> None:
    """Write a credential file (``what`` names it in errors) with mode 0600, atomically
    replacing ``path``: a reader sees the old file or the new one, never a part; a full
    disk is a CredentialError and leaves nothing behind."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise CredentialError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CredentialError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
