"""No dependency noise reaches a terminal: every console command's ``--help`` and a few
error paths, each in a fresh interpreter with every warning turned into an error, print no
warning line (a deprecated API touched at import time would print one at every command).
The X.509 code (``cryptography``, imported only by a pilot that reads or delegates a
proxy) is run the same way: ``pilot check`` with a test proxy, and a delegation."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path

import pytest

from pilot import cli as pilot_cli
from server_stub import cli as stub_cli
from testbed.pki import build_pki
from tests.conftest import BIN
from tests.tls import proxy_file

STRICT = {**os.environ, "PYTHONWARNINGS": "error", "PILOT_SERVER": ""}


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    found = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert found, "the parser has no subcommands"
    return sorted(found[0].choices)


HELP = [
    ("pilot", []),
    ("pilot-stub", []),
    *(("pilot", [name]) for name in subcommands(pilot_cli.build_parser())),
    *(("pilot-stub", [name]) for name in subcommands(stub_cli.build_parser())),
]


def run(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program), *args],
        capture_output=True, text=True, env=STRICT, cwd=cwd, timeout=60,
    )  # fmt: skip


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    noise = [line for line in result.stderr.splitlines() if "Warning" in line]
    assert not noise, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(("program", "args"), HELP, ids=[" ".join([p, *a]) for p, a in HELP])
def test_help_prints_no_warning(program: str, args: list[str], tmp_path: Path) -> None:
    result = run(program, *args, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert_quiet(result)


@pytest.mark.parametrize(
    "argv",
    [
        # no server there: one error line, no warning
        ["pilot-stub", "--server", "http://127.0.0.1:9", "status", "1"],
        ["pilot-stub", "status", "1"],
        ["pilot", "jdl", "missing.jdl"],
        ["pilot", "config", "--show"],
    ],
    ids=" ".join,
)
def test_error_paths_print_no_warning(argv: list[str], tmp_path: Path) -> None:
    result = run(argv[0], *argv[1:], cwd=tmp_path)
    assert_quiet(result)
    assert result.stderr.strip() or result.stdout.strip()


def test_pilot_check_with_a_proxy_prints_no_warning(tmp_path: Path) -> None:
    """The X.509 path (cryptography, imported only when a proxy is read) under the same
    strictness: ``pilot check`` reads and validates a test proxy and reports it."""
    pki = build_pki(tmp_path / "pki")
    proxy = proxy_file(pki, "x509up_strict")
    env = {**STRICT, "X509_USER_PROXY": str(proxy), "X509_CERT_FILE": str(pki.ca_file)}
    result = subprocess.run(
        [str(BIN / "pilot"), "check", "--disable-check", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert_quiet(result)
    assert re.search(r"credentials\s+PASSED", result.stdout), result.stdout + result.stderr
    assert "CN=testuser" in result.stdout


DELEGATION = """
import sys
from datetime import timedelta
from pathlib import Path
from pilot.backends.base import MatchedJob
from pilot.grid import credentials
from pilot.job import delegation

owner = credentials.load_proxy(Path(sys.argv[1]))

class Signer:  # what the server does with the owner's stored proxy
    def delegate_proxy(self, job, request_pem, lifetime, limited):
        chain = credentials.sign_proxy_request(
            owner, request_pem.encode(), timedelta(seconds=lifetime), limited=limited
        )
        return chain.decode()

holder = delegation.PayloadProxy(
    Signer(), MatchedJob("1", "[]"), Path(sys.argv[2]), 3600, delegation.DelegationPolicy()
)
made = holder.obtain()
holder.remove()
print(made.identity_slash, made.kind)
"""


def test_delegating_a_proxy_prints_no_warning(tmp_path: Path) -> None:
    """A payload proxy delegated as a job's is (key pair, request, signed chain, checks,
    file written and removed), in a fresh interpreter with every warning an error."""
    pki = build_pki(tmp_path / "pki")
    owner = proxy_file(pki, "x509up_owner")
    (tmp_path / "job").mkdir()
    result = subprocess.run(
        [str(BIN / "python"), "-c", DELEGATION, str(owner), str(tmp_path / "job")],
        capture_output=True, text=True, env=STRICT, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert_quiet(result)
    assert result.returncode == 0, result.stderr
    assert "CN=testuser" in result.stdout and "rfc3820" in result.stdout
