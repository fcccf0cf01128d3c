"""The pilot's credentials, resolved once: configuration + environment -> :class:`Credentials`.

:func:`resolve` is the only place that decides which proxy, CAs and bearer token the pilot
uses; the backends, the credentials check and payload isolation all receive its answer
instead of looking again. A proxy that is named (``--proxy``, ``PILOT_PROXY`` or
``X509_USER_PROXY``) but missing, unreadable, malformed or expired is a
:class:`~pilot.errors.CredentialError` (exit 31) here, before any server is called, whatever
the backend; one only found at the default location is then skipped with a warning.
``cryptography`` is imported only when there is a proxy to load.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pilot.errors import CredentialError
from pilot.grid import gridenv

if TYPE_CHECKING:
    from pilot.grid.credentials import Proxy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """Everything the pilot holds to prove who it is and whom it trusts."""

    proxy_path: Path | None = None  # the proxy meant, whether given or found
    proxy: Proxy | None = None  # loaded and validated (None: no proxy, or not loaded)
    ca_dir: Path | None = None
    ca_file: Path | None = None
    token: gridenv.Token | None = None  # found once; its value never shows in repr or logs
    token_error: str | None = None  # why a named token is unusable (load=False reports it)
    hidden_paths: tuple[Path, ...] = ()  # what a payload must not read (real paths)

    def ssl_context(self) -> ssl.SSLContext:
        """Client TLS context: the proxy as client certificate, servers checked on the CAs."""
        from pilot.grid import credentials

        return credentials.ssl_context(self.proxy, self.ca_dir, self.ca_file)


NO_CREDENTIALS = Credentials()


def resolve(
    proxy: Path | None = None,
    ca_dir: Path | None = None,
    ca_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    load: bool = True,
) -> Credentials:
    """The configured values (``proxy``, ``ca_dir``, ``ca_file``) over the environment.

    The proxy is ``proxy``, else ``$X509_USER_PROXY``, else ``/tmp/x509up_u<uid>`` when it
    exists. The CAs are ``ca_dir`` / ``ca_file`` when either is configured, else
    ``$X509_CERT_DIR`` (or the standard directory) and ``$X509_CERT_FILE``. With
    ``load=False`` the proxy is located but neither read nor validated, and a bearer token
    that cannot be read is carried as ``token_error`` instead of raised (``pilot check``
    leaves both to the credentials check, which reports rather than stops). The token is
    looked for either way, once: the check reads it from here.
    """
    env = os.environ if env is None else env
    path = proxy if proxy is not None else gridenv.find_proxy(env)
    if ca_dir is None and ca_file is None:
        ca_dir, ca_file = gridenv.ca_locations(env)
    named = proxy is not None or bool(env.get("X509_USER_PROXY", "").strip())
    loaded = None
    if load and path is not None:
        try:
            loaded = _load(path)
        except CredentialError as exc:
            if named:
                raise
            # only found at the default location: somebody's stale proxy is no reason to stop
            # (a server that needs a certificate will say so); it stays hidden from payloads
            log.warning("not using %s: %s", path, exc)
    hidden = hidden_paths(env, path)
    if loaded is None and not named:
        path = None
    token, token_error = None, None
    try:
        token = gridenv.find_token(env)
    except CredentialError as exc:
        if load:
            raise
        token_error = str(exc)
    return Credentials(
        proxy_path=path,
        proxy=loaded,
        ca_dir=ca_dir,
        ca_file=ca_file,
        token=token,
        token_error=token_error,
        hidden_paths=hidden,
    )


def _load(path: Path) -> Proxy:
    if not path.exists():
        raise CredentialError(f"proxy file {path} does not exist (from --proxy or X509_USER_PROXY)")
    from pilot.grid import credentials  # X.509 parsing is only paid for by pilots with a proxy

    loaded = credentials.load_proxy(path)
    credentials.validate(loaded)
    left = loaded.time_left().total_seconds()
    log.info("proxy %s: %s, %.1f h left", path, loaded.identity_slash, left / 3600)
    return loaded


def hidden_paths(env: Mapping[str, str], proxy: Path | None = None) -> tuple[Path, ...]:
    """The pilot's credentials that a payload must not read: proxy, keys, token files."""
    uid = os.getuid()
    names = [str(proxy) if proxy else None]
    names += [env.get(v) for v in ("X509_USER_PROXY", "X509_USER_CERT", "X509_USER_KEY")]
    names += [env.get("BEARER_TOKEN_FILE"), f"/tmp/x509up_u{uid}", f"/tmp/bt_u{uid}"]
    if env.get("XDG_RUNTIME_DIR"):
        names.append(f"{env['XDG_RUNTIME_DIR']}/bt_u{uid}")
    if env.get("HOME"):
        names.append(f"{env['HOME']}/.globus")
    found: list[Path] = []
    for name in names:
        if name and os.path.isabs(name) and os.path.lexists(name):
            path = Path(os.path.realpath(name))
            if path not in found:
                found.append(path)
    return tuple(found)
