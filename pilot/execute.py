"""Run one payload: argv list, own session and process group, stdin from /dev/null,
stdout/stderr to files in the job directory, and nothing of it left running afterwards."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutionSpec:
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    stdout: Path
    stderr: Path
    cores: int = 1
    grace: float = 30.0  # seconds between SIGTERM and SIGKILL when we stop it


@dataclass(frozen=True)
class ExecutionResult:
    exit_code: int | None  # None when it was killed by a signal
    signal: int | None
    wall_time: float
    cpu_time: float
    reason: str | None = None  # why the pilot ended it (minor status), None if it ended itself
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.reason is None


class LaunchError(Exception):
    """The payload could not be started at all (missing executable, permission)."""


def run(spec: ExecutionSpec, cancel: threading.Event | None = None) -> ExecutionResult:
    """Run the payload to completion, or until ``cancel`` is set."""
    start = time.monotonic()
    with spec.stdout.open("ab") as out, spec.stderr.open("ab") as err:
        try:
            proc = subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {spec.argv[0]}: {exc.strerror}") from exc
    reason = None
    kill_at: float | None = None
    while True:
        try:
            proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if kill_at is None and cancel is not None and cancel.is_set():
                reason = "Killed by pilot"
                signal_group(proc.pid, signal.SIGTERM)
                kill_at = time.monotonic() + spec.grace
            elif kill_at is not None and time.monotonic() >= kill_at:
                kill_group(proc.pid)
    cpu = _children_cpu()
    kill_group(proc.pid)
    code = proc.returncode
    sig = -code if code < 0 else None
    return ExecutionResult(
        exit_code=None if sig else code,
        signal=sig,
        wall_time=time.monotonic() - start,
        cpu_time=cpu,
        reason=reason,
    )


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGKILL)
