"""Shared fixtures: a real matcher stub on loopback, and the pilot as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from server_stub.server import ServerSettings, StubServer
from server_stub.userclient import UserClient

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


def pilot_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    env.update(extra)
    return env


def run_pilot(
    args: Sequence[str], *, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``pilot`` console script as a real process."""
    return subprocess.run(
        [str(BIN / "pilot"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or pilot_env(),
    )


FAST = ["--idle-timeout", "1", "--disable-check", "cpu", "--check-timeout", "10"]
