"""The pilot's credentials, resolved once (pilot.grid.resolve), and what the CLI does with them."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pilot.errors import CredentialError, ExitCode
from pilot.grid.resolve import NO_CREDENTIALS, hidden_paths, resolve
from testbed.pki import build_pki, issue_proxy, now, proxy_pem
from tests.conftest import CHECK_FAST, FAST, Stub, pilot_env, run_pilot


def _proxy(tmp_path: Path, *, expired: bool = False) -> Path:
    pki = build_pki(tmp_path / "pki")
    if expired:
        leaf = issue_proxy(
            pki.user, not_before=now() - timedelta(hours=3), not_after=now() - timedelta(hours=1)
        )
    else:
        leaf = issue_proxy(pki.user)
    return pki.proxy_file("x509up", proxy_pem(leaf, [pki.user.cert]))


def _env(**extra: str) -> dict[str, str]:
    """The pilot's environment with no credential of the developer's machine in it."""
    env = pilot_env()
    for var in ("X509_USER_PROXY", "X509_CERT_DIR", "X509_CERT_FILE", "BEARER_TOKEN"):
        env.pop(var, None)
    env.pop("BEARER_TOKEN_FILE", None)
    env["XDG_RUNTIME_DIR"] = "/nonexistent-runtime-dir"
    env.update(extra)
    return env


# --- resolve ---------------------------------------------------------------------------------


def test_configured_values_win_over_the_environment(tmp_path: Path) -> None:
    proxy = _proxy(tmp_path)
    env = {"X509_USER_PROXY": "/elsewhere", "X509_CERT_DIR": "/env-cas", "X509_CERT_FILE": "/b"}
    creds = resolve(proxy, ca_file=tmp_path / "ca.pem", env=env)
    assert creds.proxy_path == proxy and creds.proxy is not None
    assert creds.proxy.time_left() > timedelta(minutes=30)  # loaded and validated
    assert (creds.ca_dir, creds.ca_file) == (None, tmp_path / "ca.pem")  # no mixing with env
    assert proxy.resolve() in creds.hidden_paths


def test_environment_fills_what_is_not_configured(tmp_path: Path) -> None:
    proxy = _proxy(tmp_path)
    env = {"X509_USER_PROXY": str(proxy), "X509_CERT_DIR": "/env-cas", "BEARER_TOKEN": "tok"}
    creds = resolve(env=env)
    assert creds.proxy_path == proxy and creds.proxy is not None
    assert (creds.ca_dir, creds.ca_file) == (Path("/env-cas"), None)
    assert creds.token is not None and creds.token.value == "tok"


def test_a_stale_proxy_only_found_at_the_default_location_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody named it (no --proxy, no X509_USER_PROXY): an expired /tmp/x509up_u<uid> left
    by an earlier login does not stop the pilot, but it stays hidden from payloads."""
    stale = _proxy(tmp_path / "e", expired=True)
    monkeypatch.setattr("pilot.grid.gridenv.find_proxy", lambda env: stale)
    found = resolve(env={})
    assert found.proxy is None and found.proxy_path is None
    assert stale.resolve() in found.hidden_paths
    assert "not using" in caplog.text and "expired" in caplog.text
    with pytest.raises(CredentialError, match="expired"):  # named, it is still exit 31
        resolve(env={"X509_USER_PROXY": str(stale)})


@pytest.mark.parametrize("named_by", ["config", "environment"])
def test_a_named_missing_proxy_is_a_credential_error(named_by: str, tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(CredentialError, match=str(missing)) as info:
        if named_by == "config":
            resolve(missing, env={})
        else:
            resolve(env={"X509_USER_PROXY": str(missing)})
    assert info.value.exit_code == ExitCode.CREDENTIALS == 31


def test_unreadable_and_expired_proxies_are_credential_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("not a proxy")
    with pytest.raises(CredentialError):
        resolve(garbage, env={})
    with pytest.raises(CredentialError, match="expired"):
        resolve(_proxy(tmp_path / "e", expired=True), env={})


@pytest.mark.parametrize("named_by", ["config", "environment"])
def test_a_directory_named_as_the_proxy_is_a_credential_error(
    named_by: str, tmp_path: Path
) -> None:
    """A typo'd path that happens to be a directory (or ``--proxy ""``, which is ``.``)."""
    with pytest.raises(CredentialError, match=str(tmp_path)) as info:
        if named_by == "config":
            resolve(tmp_path, env={})
        else:
            resolve(env={"X509_USER_PROXY": str(tmp_path)})
    assert info.value.exit_code == ExitCode.CREDENTIALS


def test_located_only_neither_reads_nor_fails(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    creds = resolve(env={"X509_USER_PROXY": str(missing)}, load=False)
    assert creds.proxy_path == missing and creds.proxy is None
    assert NO_CREDENTIALS.proxy_path is None and NO_CREDENTIALS.hidden_paths == ()


def test_hidden_paths_come_from_the_environment(tmp_path: Path) -> None:
    proxy, cert, token = tmp_path / "proxy", tmp_path / "cert.pem", tmp_path / "token"
    for path in (proxy, cert, token):
        path.write_text("x")
    env = {
        "X509_USER_PROXY": str(proxy),
        "X509_USER_CERT": str(cert),
        "BEARER_TOKEN_FILE": str(token),
        "X509_USER_KEY": str(tmp_path / "missing"),
        "HOME": str(tmp_path / "home"),
    }
    found = hidden_paths(env, proxy)
    assert set(found) >= {proxy, cert, token}
    assert tmp_path / "missing" not in found
    assert len(found) == len(set(found))


# --- the pilot ------------------------------------------------------------------------------


def test_missing_proxy_with_a_dirac_server_exits_31_at_once(tmp_path: Path) -> None:
    """X509_USER_PROXY naming a missing file used to give an anonymous DIRAC connection."""
    env = _env(X509_CERT_DIR="/etc/ssl/certs", X509_USER_PROXY="/nonexistent")
    server = "dips://localhost:9170/WorkloadManagement/Matcher"
    started = time.monotonic()
    done = run_pilot(["run", "--server", server, *FAST], cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 31, done.stderr
    assert "/nonexistent" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30  # no connection attempt, no retry loop
    assert "Matcher" not in done.stderr  # it never got as far as calling a service


@pytest.mark.parametrize("command", ["run", "local"])
def test_missing_named_proxy_is_exit_31_on_every_backend(
    command: str, stub: Stub, tmp_path: Path
) -> None:
    (tmp_path / "job.jdl").write_text('Executable = "/bin/true";')
    args = (
        ["run", "--server", stub.url, *FAST]
        if command == "run"
        else ["local", str(tmp_path / "job.jdl"), "--output-dir", str(tmp_path / "out")]
    )
    env = _env(X509_USER_PROXY=str(tmp_path / "absent"))
    done = run_pilot(args, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 31, done.stderr
    assert str(tmp_path / "absent") in done.stderr
    if command == "run":
        assert stub.client.pilots() == []  # stopped before registering


def test_check_still_reports_a_missing_named_proxy(tmp_path: Path) -> None:
    env = _env(X509_USER_PROXY=str(tmp_path / "absent"))
    done = run_pilot(["check", "--json", *CHECK_FAST], cwd=tmp_path, env=env, timeout=60)
    assert '"name": "credentials"' in done.stdout, done.stderr
    assert f"no X.509 proxy at {tmp_path / 'absent'}" in done.stdout
    assert os.path.basename(str(tmp_path / "absent")) in done.stderr  # and says why


def test_the_payload_checks_servers_on_the_cas_the_pilot_was_given(tmp_path: Path) -> None:
    """--ca-dir/--ca-file reach the payload (which may hold a delegated proxy) as
    X509_CERT_DIR/X509_CERT_FILE, over whatever the pilot's environment said."""
    from pilot.agent import payload_base_env
    from pilot.job import jdl, jobrun

    creds = resolve(None, tmp_path / "cas", tmp_path / "bundle.pem", env={}, load=False)
    settings = jobrun.JobSettings(
        work_dir=tmp_path, pilot_reference="p", site="S", base_env=payload_base_env(creds)
    )
    desc = jdl.JobDescription.from_attrs(jdl.parse('[Executable = "true";]'))
    env = jobrun.payload_env(desc, "1", settings, tmp_path / "job", 1)
    assert env["X509_CERT_DIR"] == str(tmp_path / "cas")
    assert env["X509_CERT_FILE"] == str(tmp_path / "bundle.pem")
