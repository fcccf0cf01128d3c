"""Helpers shared by the execution, watchdog and signal tests (not a payload)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from tests.conftest import BIN, Stub, pilot_env

PAYLOADS = Path(__file__).resolve().parent
PYTHON = sys.executable
MARK_ENV = "HOSTILE_MARK"


def new_mark(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def payload_jdl(
    script: str, mark: str, *args: object, extra: str = "", python: str = PYTHON
) -> str:
    """A JDL running ``tests/payloads/<script>`` with the marker in argv and environment."""
    arguments = " ".join([str(PAYLOADS / script), mark, *map(str, args)])
    return (
        f'Executable = "{python}"; Arguments = "{arguments}";'
        f' ExecutionEnvironment = {{"{MARK_ENV}={mark}"}};'
        f' StdOutput = "out"; StdError = "err"; OutputSandbox = {{"out", "err"}}; {extra}'
    )


def marked_processes(mark: str) -> list[psutil.Process]:
    """Every process on the node carrying ``mark`` in its argv or environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                if any(mark in part for part in proc.cmdline()):
                    found.append(proc)
                continue
            if any(mark in part for part in proc.cmdline()):
                found.append(proc)
                continue
            if proc.environ().get(MARK_ENV) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(procs: Sequence[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} ppid={proc.ppid()} {proc.status()} {proc.cmdline()}")
        except psutil.Error:
            out.append(f"{proc.pid} (gone)")
    return out


def kill_marked(mark: str) -> None:
    """Test clean-up after a failure: SIGKILL, by pid, the processes this test caused."""
    for proc in marked_processes(mark):
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)


def wait_for(what: Callable[[], object], timeout: float, step: float = 0.1) -> object:
    """Poll ``what`` until it returns something true; that value, or the last one."""
    deadline = time.monotonic() + timeout
    value = what()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = what()
    return value


def start_pilot(
    stub: Stub, work: Path, *args: str, env: dict[str, str] | None = None, argv0: Sequence[str] = ()
) -> subprocess.Popen[str]:
    """The pilot as a real background process; its log goes to ``work/pilot.log``."""
    work.mkdir(parents=True, exist_ok=True)
    log = (work / "pilot.log").open("w")
    command = [*argv0] if argv0 else [str(BIN / "pilot")]
    return subprocess.Popen(
        [*command, "run", "--server", stub.url, "--work-dir", str(work / "w"), *args],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or pilot_env(),
    )


def minor_statuses(stub: Stub, job_id: int) -> list[tuple[str, str]]:
    return [(h["Status"], h["MinorStatus"]) for h in stub.client.logging_info(job_id)]
