"""The one subprocess choke point for short helper commands (checks, batch queries).

Argv lists only, never a shell. Each command runs in its own session so that a
timeout kills its whole process group; a process stuck in the kernel (a hung CVMFS
mount) is abandoned after the kill rather than waited for, so no caller ever hangs.
Payloads do not go through here: they are run by :mod:`pilot.job.execute`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

NOT_FOUND = 127
TIMED_OUT = 124


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run(
    argv: Sequence[str],
    *,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin_text: str | None = None,
) -> CommandResult:
    """Run ``argv`` and return its result; never raises for a missing or hung command."""
    start = time.monotonic()
    args = tuple(argv)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        return CommandResult(args, NOT_FOUND, "", str(exc), time.monotonic() - start)
    try:
        out, err = proc.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        log.debug("command %s timed out after %.1f s", args[0], timeout)
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            out, err = "", ""  # stuck in the kernel: abandon it
        return CommandResult(args, TIMED_OUT, out or "", err or "", time.monotonic() - start, True)
    return CommandResult(args, proc.returncode, out, err, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
