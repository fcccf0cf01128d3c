"""The backend for a configuration: ``--backend`` (or the server URL's scheme) picks it.

The credentials come resolved (:func:`pilot.grid.resolve.resolve`); no backend looks for a
proxy, CA or token of its own.
"""

from __future__ import annotations

from pilot.backends.base import Backend
from pilot.config import PilotConfig
from pilot.errors import UsageError
from pilot.grid.resolve import Credentials


def backend_kind(cfg: PilotConfig) -> str:
    """``stub`` or ``dirac``: ``--backend``, or ``auto`` by the server URL's scheme."""
    if cfg.backend != "auto":
        return cfg.backend
    return "dirac" if (cfg.server or "").startswith("dips://") else "stub"


def make_backend(cfg: PilotConfig, creds: Credentials) -> Backend:
    """A connected-on-demand backend for ``cfg.server`` with the pilot's credentials."""
    if not cfg.server:
        raise UsageError("no server: give --server URL or set PILOT_SERVER")
    if backend_kind(cfg) == "dirac":
        from pilot.backends.dirac.backend import DiracBackend, settings_from_config

        return DiracBackend(settings_from_config(cfg, creds), creds.ssl_context())
    from pilot.backends.stub import HttpClient, StubBackend

    # plain HTTP (loopback): no TLS set-up to pay for
    verify = creds.ssl_context() if cfg.server.startswith("https://") else False
    token = creds.token.value if creds.token is not None else None
    return StubBackend(
        HttpClient(cfg.server, verify=verify, bearer=token, timeout=cfg.server_timeout)
    )
