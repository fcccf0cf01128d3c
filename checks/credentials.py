"""``credentials``: the pilot's X.509 proxy (identity, time left, VOMS) and WLCG bearer token.

Options (``[checks.credentials]``): ``proxy`` (path; default the proxy the pilot
resolved from --proxy, X509_USER_PROXY or /tmp/x509up_u<uid>), ``required`` (bool,
default false: a missing proxy is a WARNING, true makes it FAILED), ``min_time_left``
(seconds a proxy must still be valid, default 600). A proxy that exists but is expired,
unreadable or malformed always FAILS.
The bearer token is the one the pilot resolved (``ctx.credentials.token``, found once);
only where it was found is reported, never the token.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checks._util import option_bool
from pilot.api import (
    CheckContext,
    CheckOutcome,
    CredentialError,
    Status,
    load_proxy,
    token_expiry,
    validate_proxy,
)

if TYPE_CHECKING:
    from pilot.api import Credentials, Proxy

NAME = "credentials"


def _token_facts(found: Credentials) -> dict[str, Any]:
    """Where the pilot found its token (as resolved once for the run), never the token."""
    token = found.token
    if found.token_error is not None:
        return {"token_source": None, "token_error": found.token_error}
    if token is None:
        return {"token_source": None}
    expiry = token_expiry(token)
    return {"token_source": token.source, "token_expires": expiry.isoformat() if expiry else None}


def _proxy_facts(proxy: Proxy) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "proxy_path": str(proxy.path),
        "identity": proxy.identity,
        "identity_slash": proxy.identity_slash,
        "proxy_kind": proxy.kind,
        "time_left": int((proxy.not_after - datetime.now(UTC)).total_seconds()),
    }
    if proxy.voms is not None:
        facts["vo"] = proxy.voms.vo
        facts["fqans"] = list(proxy.voms.fqans)
    return facts


class CredentialsCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 10.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        facts = _token_facts(ctx.credentials)
        configured = ctx.option(NAME, "proxy")
        path = Path(configured) if configured else ctx.credentials.proxy_path
        if path is None or not path.exists():
            status = Status.FAILED if option_bool(ctx, NAME, "required", False) else Status.WARNING
            where = f"at {path}" if path is not None else "(X509_USER_PROXY unset)"
            return CheckOutcome(status, f"no X.509 proxy {where}", facts)
        min_left = timedelta(seconds=float(ctx.option(NAME, "min_time_left", 600)))
        resolved = ctx.credentials.proxy
        if resolved is not None and resolved.path == path:
            proxy = resolved  # the pilot read it already: one read and one parse per start
        else:
            try:
                proxy = load_proxy(path)
            except CredentialError as exc:
                return CheckOutcome(Status.FAILED, f"cannot read proxy: {exc}", facts)
        facts.update(_proxy_facts(proxy))
        try:
            validate_proxy(proxy, min_left)
        except CredentialError as exc:
            return CheckOutcome(Status.FAILED, str(exc), facts)
        hours = facts["time_left"] / 3600
        tags = (f"vo:{proxy.voms.vo}",) if proxy.voms is not None else ()
        return CheckOutcome(
            Status.PASSED, f"{proxy.identity_slash}, {hours:.1f} h left", facts, tags
        )
