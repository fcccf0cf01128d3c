"""No dependency noise reaches a terminal: every console command's ``--help`` and a few
error paths, each in a fresh interpreter with every warning turned into an error, print no
warning line (a deprecated API touched at import time would print one at every command)."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from pilot import cli as pilot_cli
from server_stub import cli as stub_cli
from tests.conftest import BIN

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
