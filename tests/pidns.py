"""What the Slurm (:mod:`tests.slurm.cluster`) and Grid Engine (:mod:`tests.sge.cluster`)
test clusters share: their own PID namespace, seen from the host, and their fixture.

:func:`start_namespace` runs :file:`slurm/nsinit.py` (the daemons' spec in a JSON file) as
the first process of a new PID namespace under ``unshare``; :meth:`Namespace.stop` stops
everything in it by PID only: SIGTERM to that first process (which stops the daemons and
every job), SIGKILL of it if it does not go (the kernel then kills the whole namespace),
and SIGKILL of any PID still found in the namespace. :func:`running_cluster` is the body
of both clusters' module fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import psutil

from tests.conftest import unavailable

NSINIT = Path(__file__).resolve().parent / "slurm" / "nsinit.py"


class ClusterError(RuntimeError):
    """The cluster could not be started; the message says why (with log tails)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path.name}: none)"
    return f"--- {path}\n" + "\n".join(text[-lines:])


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class Namespace:
    unshare: subprocess.Popen[bytes]
    init_pid: int  # host PID of the namespace's first process (nsinit.py)
    pid_ns: str  # /proc/PID/ns/pid link text of the namespace

    def alive(self) -> bool:
        return self.unshare.poll() is None

    def pids(self) -> list[int]:
        """Host PIDs of every process in the namespace."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "pid") == self.pid_ns:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return sorted(found)

    def stop(self, grace: float, stray: str) -> list[str]:
        """Stop everything in the namespace; returns what had to be killed the hard way
        (and each process named ``stray`` that was still running: a job's supervisor)."""
        hard: list[str] = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).name() == stray:
                    hard.append(f"stray {stray} pid {pid} (stopped with the namespace)")
        _signal(self.init_pid, signal.SIGTERM)
        try:
            self.unshare.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            hard.append(f"namespace init pid {self.init_pid} ignored SIGTERM: SIGKILL")
            _signal(self.init_pid, signal.SIGKILL)
            _signal(self.unshare.pid, signal.SIGKILL)
            self.unshare.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while (left := self.pids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            hard.append(f"pid {pid} still in the namespace: SIGKILL")
            _signal(pid, signal.SIGKILL)
        return hard


def _namespace_init(unshare: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    own = os.readlink("/proc/self/ns/pid")
    while time.monotonic() < deadline and unshare.poll() is None:
        for child in psutil.Process(unshare.pid).children():
            try:
                ns = os.readlink(f"/proc/{child.pid}/ns/pid")
            except OSError:
                continue
            if ns != own:
                return child.pid, ns
        time.sleep(0.05)
    raise ClusterError("the cluster's PID namespace did not come up")


def start_namespace(spec: Path, cwd: Path, env: Mapping[str, str] | None = None) -> Namespace:
    """``nsinit.py spec`` as the first process of a new PID namespace (killed with us)."""
    argv = ["setpriv", "--pdeathsig", "KILL", "unshare", "--pid", "--fork", "--mount-proc"]
    argv += ["--kill-child=SIGTERM", sys.executable, str(NSINIT), str(spec)]
    unshare = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, cwd=cwd, env=None if env is None else dict(env)
    )
    try:
        init_pid, pid_ns = _namespace_init(unshare)
    except ClusterError:
        unshare.kill()
        unshare.wait(timeout=10)
        raise
    return Namespace(unshare, init_pid, pid_ns)


class Cluster(Protocol):
    def stop(self) -> list[str]: ...

    def namespace_pids(self) -> list[int]: ...


C = TypeVar("C", bound=Cluster)


@contextlib.contextmanager
def running_cluster(kind: str, start: Callable[[], C]) -> Iterator[C]:
    """A started cluster (skip the test if it cannot start, fail it with ``CI=true``);
    afterwards it is stopped and nothing of it may be left."""
    try:
        cluster = start()
    except ClusterError as exc:
        unavailable(f"cannot start a {kind} test cluster: {exc}")
    try:
        yield cluster
    finally:
        hard = cluster.stop()
        if hard:
            print(f"{kind.lower()} tear-down:", *hard, sep="\n  ")
        assert cluster.namespace_pids() == [], "processes of the cluster survived tear-down"
