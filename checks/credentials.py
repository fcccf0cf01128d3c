"""``credentials``: an X.509 proxy (identity, time left) and a WLCG bearer token (source).

First, simple version. Options (``[checks.credentials]``): ``required`` (bool, default
false: a missing proxy is a WARNING; true makes it FAILED).

The proxy is X509_USER_PROXY or /tmp/x509up_u<uid>. The token is looked for in the WLCG
discovery order: BEARER_TOKEN, BEARER_TOKEN_FILE, $XDG_RUNTIME_DIR/bt_u<uid>,
/tmp/bt_u<uid>; only where it was found is reported, never the token.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from cryptography import x509

from checks._util import option_bool
from pilot.api import CheckContext, CheckOutcome, Status

NAME = "credentials"


def proxy_path() -> Path:
    configured = os.environ.get("X509_USER_PROXY")
    return Path(configured) if configured else Path(f"/tmp/x509up_u{os.getuid()}")


def token_source() -> str | None:
    """Where a bearer token was found (``env:BEARER_TOKEN`` or ``file:<path>``), or None."""
    if os.environ.get("BEARER_TOKEN", "").strip():
        return "env:BEARER_TOKEN"
    candidates: list[Path] = []
    if os.environ.get("BEARER_TOKEN_FILE"):
        candidates.append(Path(os.environ["BEARER_TOKEN_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / f"bt_u{os.getuid()}")
    candidates.append(Path(f"/tmp/bt_u{os.getuid()}"))
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_size > 0:
                return f"file:{path}"
        except OSError:
            continue
    return None


def inspect_proxy(path: Path, now: dt.datetime) -> dict[str, Any]:
    """Identity and seconds left of the first certificate in a PEM proxy file."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    left = (cert.not_valid_after_utc - now).total_seconds()
    return {
        "proxy_path": str(path),
        "identity": cert.subject.rfc4514_string(),
        "time_left": int(left),
    }


class CredentialsCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 5.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        facts: dict[str, Any] = {"token_source": token_source()}
        path = proxy_path()
        if not path.exists():
            status = Status.FAILED if option_bool(ctx, NAME, "required", False) else Status.WARNING
            return CheckOutcome(status, f"no X.509 proxy at {path}", facts)
        try:
            facts.update(inspect_proxy(path, dt.datetime.now(dt.UTC)))
        except (OSError, ValueError) as exc:
            return CheckOutcome(Status.FAILED, f"cannot read proxy {path}: {exc}", facts)
        if facts["time_left"] <= 0:
            return CheckOutcome(Status.FAILED, f"proxy {path} expired", facts)
        hours = facts["time_left"] / 3600
        return CheckOutcome(Status.PASSED, f"{facts['identity']}, {hours:.1f} h left", facts)
