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

from tests.conftest import BIN, Stub, pilot_env, unavailable

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


# -- running the pilot as an ordinary user ---------------------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"


def nobody_command() -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment to run ``pilot`` as user nobody; else the test is
    ``unavailable`` (skipped saying why, failed under CI=true).

    The test venv's interpreter may live where nobody cannot go (/root), so the system
    Python (the same version on this platform) runs the venv's site-packages.
    """
    import shutil
    import sysconfig

    if os.geteuid() != 0:
        unavailable("needs root: to switch to user nobody with runuser (CI runs as root)")
    runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if runuser is None:
        unavailable("needs runuser (util-linux) to switch to user nobody")
    site = sysconfig.get_paths()["purelib"]
    # site.addsitedir runs the venv's .pth files: the editable installs of the project
    # and of the sample VO plugin (whose entry point the checks load).
    code = f"import site, sys; site.addsitedir({site!r}); "
    probe = subprocess.run(
        [
            runuser,
            "-u",
            "nobody",
            "--",
            SYSTEM_PYTHON,
            "-S",
            "-c",
            code + "import psutil, pilot.cli",
        ],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        unavailable(f"needs {SYSTEM_PYTHON} able to import the venv as nobody: {probe.stderr}")
    code += "from pilot.cli import main; sys.exit(main())"
    return [runuser, "-u", "nobody", "--", SYSTEM_PYTHON, "-S", "-c", code], pilot_env(HOME="/")


def nobody_dir() -> Path:
    """A fresh directory under /tmp that user nobody owns (the caller removes it)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="pilot-nobody-", dir="/tmp"))
    nobody = pwd_nobody()
    os.chown(path, nobody, nobody)
    return path


def pilot_process(launcher: subprocess.Popen[str]) -> int:
    """The pilot's pid: the launcher itself, or the child of ``runuser``."""
    if "runuser" not in str(launcher.args[0]):
        return launcher.pid
    children = wait_for(lambda: psutil.Process(launcher.pid).children(), 10)
    assert isinstance(children, list) and children
    return int(children[0].pid)


def pwd_nobody() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_uid
