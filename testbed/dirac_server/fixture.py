"""The ``dirac_server`` pytest fixture (session scope): a real DIRAC 9.1.22 WMS on loopback.

Use it from ``tests/conftest.py``::

    from testbed.dirac_server.fixture import dirac_server  # noqa: F401

Set-up is cached (the DIRAC venv under build/cache/dirac-venv; with $PILOT_DIRAC_STATE
also the databases and certificates), the server is started once per session and every
process is stopped by pid at the end, also when a test or the start fails. When the
server cannot be set up here (no MariaDB, pip failure), tests using the fixture FAIL
with the reason under CI (``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pilot import proc
from pilot.backends.dirac.backend import DiracSettings

from .certs import HOST_DN, OTHER_DN, PILOT_DN, USER_DN
from .harness import (
    SERVICES,
    STATE_ENV,
    Harness,
    Layout,
    SetupError,
    default_layout,
    default_venv,
)

VO = "testvo"
GROUP = "testvo_user"
SITE = "DIRAC.Local.test"
CE = "localhost"
QUEUE = "queue"


@dataclass(frozen=True)
class DiracServer:
    """A running test DIRAC server: where it is and how to talk to it."""

    urls: Mapping[str, str]  # "matcher", ..., "proxymanager", "configuration", "filecatalog"
    ca_dir: Path
    proxy: Path  # job owner's proxy, group testvo_user (NormalUser), uploaded too
    pilot_proxy: Path  # the pilots' proxy, group testvo_pilot (GenericPilot, LimitedDelegation)
    nodeleg_proxy: Path  # the pilots' identity in testvo_pilot_nodeleg (GenericPilot only)
    other_proxy: Path  # another owner in testvo_user whose proxy was never uploaded
    host_cert: Path  # /O=DIRACTest/CN=localhost: TrustedHost, Operator, JobAdministrator
    host_key: Path
    user_cert: Path
    user_key: Path
    env: Mapping[str, str]  # for dirac-* commands: DIRAC_ROOT_PATH, X509_*, PATH
    state_dir: Path
    log_dir: Path
    venv: Path
    vo: str = VO
    group: str = GROUP
    site: str = SITE
    ce: str = CE
    queue: str = QUEUE
    user_dn: str = USER_DN
    pilot_dn: str = PILOT_DN
    other_dn: str = OTHER_DN
    host_dn: str = HOST_DN
    extra: Mapping[str, Any] = field(default_factory=dict)

    def settings(self, **overrides: Any) -> DiracSettings:
        """DiracSettings for the pilot backend against this server (the pilots' proxy)."""
        values: dict[str, Any] = {
            "matcher_url": self.urls["matcher"],
            "job_state_update_url": self.urls["jobstateupdate"],
            "sandbox_store_url": self.urls["sandboxstore"],
            "job_monitoring_url": self.urls["jobmonitoring"],
            "pilot_manager_url": self.urls["pilotmanager"],
            "proxy": self.pilot_proxy,
            "ca_dir": self.ca_dir,
            "vo": self.vo,
            "timeout": 60.0,
        }
        values.update(overrides)
        return DiracSettings(**values)

    def dirac(
        self,
        command: str,
        *args: str,
        timeout: float = 120.0,
        cwd: Path | None = None,
        proxy: Path | None = None,
    ) -> proc.CommandResult:
        """Run ``dirac-<command> args...`` from the server's venv as the job owner
        (testuser), or with ``proxy`` (another owner's)."""
        argv = [str(self.venv / "bin" / f"dirac-{command}"), *args]
        env = dict(self.env) | ({"X509_USER_PROXY": str(proxy)} if proxy else {})
        return proc.run(argv, timeout=timeout, env=env, cwd=str(cwd) if cwd else None)

    def host_context(self) -> ssl.SSLContext:
        """TLS client context with the host certificate (admin-side DISET calls in tests)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_cert_chain(self.host_cert, self.host_key)
        ctx.load_verify_locations(capath=self.ca_dir)
        return ctx


def unavailable(reason: str) -> None:
    """Fail under CI (the CI machine must run these tests), skip elsewhere."""
    message = f"needs a local DIRAC server: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def describe(harness: Harness) -> DiracServer:
    layout = harness.layout
    return DiracServer(
        urls={svc.key: harness.url(svc.key) for svc in SERVICES},
        ca_dir=layout.ca_dir,
        proxy=layout.proxy,
        pilot_proxy=layout.pilot_proxy,
        nodeleg_proxy=layout.nodeleg_proxy,
        other_proxy=layout.other_proxy,
        host_cert=layout.pki / "hostcert.pem",
        host_key=layout.pki / "hostkey.pem",
        user_cert=layout.pki / "user" / "usercert.pem",
        user_key=layout.pki / "user" / "userkey.pem",
        env=harness.env(),
        state_dir=layout.root,
        log_dir=layout.logs,
        venv=layout.venv,
    )


@pytest.fixture(scope="session")
def dirac_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiracServer]:
    """Set up (cached), start, yield, and always stop the test DIRAC server."""
    keep_state = STATE_ENV in os.environ
    layout = default_layout() if keep_state else _temp_layout(tmp_path_factory)
    harness = Harness(layout)
    try:
        harness.setup()
        harness.start()
    except SetupError as exc:
        harness.stop()
        unavailable(f"{exc} (logs in {layout.logs})")
    except BaseException:
        harness.stop()
        raise
    try:
        yield describe(harness)
    finally:
        harness.stop()
        if not keep_state:  # the databases are ~100 MB; logs stay for post-mortems
            shutil.rmtree(layout.root / "mysql", ignore_errors=True)
            shutil.rmtree(layout.root / "storage", ignore_errors=True)


def _temp_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return Layout(tmp_path_factory.mktemp("dirac-server"), default_venv())
