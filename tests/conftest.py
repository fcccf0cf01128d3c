"""Shared fixtures: a real matcher stub on loopback, and the pilot as a real process."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from server_stub.server import ServerSettings, StubServer
from server_stub.userclient import UserClient
from testbed.dirac_server.fixture import dirac_server  # noqa: F401 (session fixture)

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stub:
    url: str
    server: StubServer
    client: UserClient
    tmp: Path

    def submit(self, jdl_text: str, files: dict[str, str] | None = None) -> list[int]:
        """Submit like ``pilot-stub submit`` would: write the JDL and its files, then send."""
        from server_stub.cli import submit_file

        folder = self.tmp / f"submit-{len(list(self.tmp.glob('submit-*')))}"
        folder.mkdir()
        for name, content in (files or {}).items():
            (folder / name).write_text(content)
            (folder / name).chmod(0o755)
        (folder / "job.jdl").write_text(jdl_text)
        return submit_file(self.client, folder / "job.jdl")

    def status(self, job_id: int) -> str:
        return str(self.client.job(job_id)["status"])


def start_stub(tmp: Path, **settings: object) -> Stub:
    server = StubServer(
        ServerSettings(db=tmp / "stub.db", sandbox_dir=tmp / "sandboxes", **settings)  # type: ignore[arg-type]
    )
    server.start()
    return Stub(server.url, server, UserClient(server.url), tmp)


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[Stub]:
    handle = start_stub(tmp_path / "stub")
    yield handle
    handle.client.close()
    handle.server.stop()


def unavailable(reason: str) -> NoReturn:
    """What a machine lacks for a test: fail under CI (``CI=true``, which must provide it),
    skip elsewhere; both say why."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def pilot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    env.update(extra)
    return env


def run_pilot(
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    program: Path = BIN / "pilot",
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pilot`` console script (or ``program``, such as the one-file
    binary) as a real process; its output is kept in ``cwd/pilot-runs.log`` for the log
    scan."""
    done = subprocess.run(
        [str(program), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or pilot_env(),
    )
    with (cwd / "pilot-runs.log").open("a") as record:
        record.write(f"$ pilot {' '.join(args)}\n{done.stdout}{done.stderr}")
    return done


CHECK_FAST = ["--disable-check", "cpu", "--check-timeout", "10"]  # `check` runs no loop
FAST = ["--idle-timeout", "1", *CHECK_FAST]


# -- the log scan: no token or private key in any log the suite writes ---------------------

PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_VALUES: set[str] = set()  # tests add the tokens they hand to pilots and stubs
_SUITE_LOG: list[Path] = []


def secret(value: str) -> str:
    """Register a secret the log scan must never find; returns it."""
    SECRET_VALUES.add(value)
    return value


def pytest_configure(config: pytest.Config) -> None:
    path = Path(tempfile.mkdtemp(prefix="pilot-suite-logs-")) / "suite.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("httpcore").setLevel(logging.INFO)  # transport chatter, no content
    _SUITE_LOG.append(path)


PLANTED = "planted-secrets"  # the scan's own self-test plants secrets under such a folder


def _log_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        name = path.name
        if PLANTED in path.relative_to(root).parts:
            continue
        if (
            path.is_file()
            and not path.is_symlink()
            and (name.endswith((".log", ".out", ".err")) or name in ("stderr", "stdout"))
        ):
            yield path


def _stub_logs(root: Path) -> Iterator[tuple[str, bytes]]:
    for db in root.rglob("*.db"):
        if PLANTED in db.relative_to(root).parts:
            continue
        try:
            with sqlite3.connect(db) as conn:
                for stamp, text in conn.execute("SELECT stamp, log FROM pilots"):
                    yield f"{db} pilot {stamp}", (text or "").encode()
        except sqlite3.Error:
            continue


def scan_for_secrets(root: Path, extra: list[Path], *, planted: bool = False) -> list[str]:
    if planted:
        root = root / PLANTED
    found = []
    sources: list[tuple[str, bytes]] = [
        (str(p), p.read_bytes()) for p in [*_log_files(root), *extra] if p.exists()
    ]
    sources.extend(_stub_logs(root))
    for where, data in sources:
        if PEM_PRIVATE_KEY.search(data):
            found.append(f"{where}: private key block")
        found.extend(f"{where}: registered secret" for s in SECRET_VALUES if s.encode() in data)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or not _SUITE_LOG:
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    found = scan_for_secrets(factory.getbasetemp(), _SUITE_LOG)
    if found:
        print("\nLOG SCAN: secrets found in logs:\n  " + "\n  ".join(found))
        session.exitstatus = 1
    else:
        print(f"\nlog scan: no token or private key in the suite's logs ({_SUITE_LOG[0]})")
