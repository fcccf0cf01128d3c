"""PID 1 of a test cluster's own PID namespace: starts the daemons, reaps, tears down.

Used by the Slurm (:mod:`tests.slurm.cluster`) and Grid Engine (:mod:`tests.sge.cluster`)
test clusters. Started as
``unshare --pid --fork --mount-proc --kill-child=SIGTERM python nsinit.py SPEC.json``.
Every process of the cluster (munged, slurmctld, slurmd, each slurmstepd and each job;
sge_qmaster, sge_execd, each shepherd and each job) lives in this namespace, and orphans
(slurmstepd and the Grid Engine daemons daemonize) are re-parented to this process, which
reaps them. On SIGTERM it sends SIGTERM to every other process of the
namespace, SIGKILL after a grace period, and exits; when it exits the kernel kills
whatever is left in the namespace, so nothing of the cluster can outlive it.

SPEC.json: ``{"log": PATH, "grace": SECONDS, "daemons": [{"argv": [...], "wait_for": PATH
or null}, ...]}``; each daemon starts once the previous one's ``wait_for`` file exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

stopping = False


def on_term(signum: int, frame: object) -> None:
    global stopping
    stopping = True


def reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def start(daemons: list[dict[str, Any]], log: Any) -> None:
    for daemon in daemons:
        subprocess.Popen(daemon["argv"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for = daemon.get("wait_for")
        deadline = time.monotonic() + 20
        while wait_for and not Path(wait_for).exists() and time.monotonic() < deadline:
            reap()
            time.sleep(0.05)


def stop(grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(-1, sig)  # every process of this namespace but ourselves
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            reap()
            try:
                os.kill(-1, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    with open(spec["log"], "ab", buffering=0) as log:
        start(spec["daemons"], log)
        while not stopping:
            reap()
            time.sleep(0.1)
        stop(float(spec.get("grace", 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
