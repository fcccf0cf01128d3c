"""Payload isolation: a sandbox around the payload's argv, and a cgroup around its memory.

``--isolation`` picks the runtime, probed once when the pilot starts:

- ``bwrap``: bubblewrap, unprivileged, in a new user, PID and IPC namespace. The whole
  file system is read-only, ``/tmp`` is private, the pilot's work directory is an empty
  read-only tmpfs with only the job's own directory bound back writable, and the pilot's
  credentials (proxy, certificate and key, token files) are masked. The payload cannot
  see or signal the pilot's processes, and dies with the pilot (``--die-with-parent``).
- ``apptainer``: ``apptainer exec --contain`` of the configured image, the job
  directory bound in.
- ``auto``: bubblewrap when it works on this node, else no isolation (logged).
- ``none``: the payload runs as the pilot's user, in its own session only.

The cgroup part is opportunistic: when the pilot runs in a cgroup v2 that it may write
(a delegated subtree) and that has the memory controller, each job gets a child cgroup
with ``memory.max``; otherwise nothing happens (a debug line says why) and the watchdog's
RSS sampling is the memory limit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pilot import cgroups, proc
from pilot.errors import CheckFailed

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 15.0
GPU_DEVICE_GLOBS = ("nvidia*", "dri", "kfd")


class Runtime(StrEnum):
    NONE = "none"
    BWRAP = "bwrap"
    APPTAINER = "apptainer"


@dataclass(frozen=True)
class Isolation:
    """The runtime chosen for every payload of this pilot, and why."""

    runtime: Runtime
    detail: str
    executable: str | None = None
    image: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {"runtime": self.runtime.value, "detail": self.detail}


NO_ISOLATION = Isolation(Runtime.NONE, "isolation disabled")


def choose(mode: str, work_dir: Path, image: str | None = None) -> Isolation:
    """Resolve ``--isolation`` (auto|bwrap|apptainer|none) by probing; once per pilot."""
    if mode == "none":
        return NO_ISOLATION
    if mode in ("auto", "bwrap"):
        found = _probe_bwrap(work_dir)
        if found.runtime is Runtime.BWRAP or mode == "bwrap":
            return _required(found, mode)
    if mode == "apptainer" or (mode == "auto" and image):
        found = _probe_apptainer(work_dir, image)
        if found.runtime is Runtime.APPTAINER or mode == "apptainer":
            return _required(found, mode)
    return Isolation(Runtime.NONE, f"auto: no working sandbox ({found.detail})")


def _required(found: Isolation, mode: str) -> Isolation:
    if found.runtime is Runtime.NONE and mode != "auto":
        raise CheckFailed(f"isolation {mode} requested but unusable: {found.detail}")
    return found


def _probe_bwrap(work_dir: Path) -> Isolation:
    exe = shutil.which("bwrap")
    if exe is None:
        return Isolation(Runtime.NONE, "bwrap not found in PATH")
    candidate = Isolation(Runtime.BWRAP, f"bubblewrap {exe}", executable=exe)
    return _probe(candidate, work_dir)


def _probe_apptainer(work_dir: Path, image: str | None) -> Isolation:
    exe = shutil.which("apptainer") or shutil.which("singularity")
    if exe is None:
        return Isolation(Runtime.NONE, "apptainer not found in PATH")
    if not image:
        return Isolation(Runtime.NONE, "apptainer found but no image configured")
    candidate = Isolation(Runtime.APPTAINER, f"apptainer {exe} {image}", exe, image)
    return _probe(candidate, work_dir)


def _probe(candidate: Isolation, work_dir: Path) -> Isolation:
    """Run ``true`` exactly as a payload would run; the candidate if that works."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".isolation-probe-", dir=work_dir) as tmp:
        true = shutil.which("true") or "/bin/true"
        argv = wrap(candidate, (true,), Path(tmp), work_dir, ())
        result = proc.run(argv, timeout=PROBE_TIMEOUT_S, cwd=tmp)
    if result.ok:
        log.info("isolation: %s works here", candidate.detail)
        return candidate
    why = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    log.info("isolation: %s does not work here: %s", candidate.runtime, why)
    return Isolation(Runtime.NONE, f"{candidate.runtime} does not work here: {why}")


# -- wrapping ---------------------------------------------------------------------------


def wrap(
    isolation: Isolation,
    argv: Sequence[str],
    job_dir: Path,
    work_dir: Path,
    hidden: Sequence[Path],
) -> tuple[str, ...]:
    """``argv`` as run inside the sandbox (unchanged without isolation)."""
    if isolation.runtime is Runtime.BWRAP:
        return bwrap_argv(isolation.executable or "bwrap", argv, job_dir, work_dir, hidden)
    if isolation.runtime is Runtime.APPTAINER:
        if not isolation.image:
            raise CheckFailed("apptainer isolation needs an image")
        return apptainer_argv(isolation.executable or "apptainer", isolation.image, argv, job_dir)
    return tuple(argv)


def bwrap_argv(
    bwrap: str,
    argv: Sequence[str],
    job_dir: Path,
    work_dir: Path,
    hidden: Sequence[Path],
) -> tuple[str, ...]:
    masked = (Path("/tmp"), work_dir)
    args = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--die-with-parent",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--tmpfs", str(work_dir),
    ]  # fmt: skip
    for device in _gpu_devices():
        args += ["--dev-bind", str(device), str(device)]
    for path in hidden:
        if any(path.is_relative_to(m) for m in masked):
            continue  # already behind an empty tmpfs
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--bind", str(job_dir), str(job_dir), "--remount-ro", str(work_dir)]
    args += ["--chdir", str(job_dir), "--", *argv]
    return tuple(args)


def apptainer_argv(
    apptainer: str, image: str, argv: Sequence[str], job_dir: Path
) -> tuple[str, ...]:
    return (
        apptainer,
        "exec",
        "--contain",
        "--ipc",
        "--pid",
        "--bind",
        f"{job_dir}:{job_dir}",
        "--pwd",
        str(job_dir),
        image,
        *argv,
    )


def _gpu_devices() -> list[Path]:
    dev = Path("/dev")
    return sorted(p for pattern in GPU_DEVICE_GLOBS for p in dev.glob(pattern))


# -- cgroup v2 --------------------------------------------------------------------------


@dataclass(frozen=True)
class CgroupParent:
    """A cgroup v2 directory whose children get the memory controller."""

    path: Path


def _own_cgroup(proc_cgroup: Path, mountinfo: Path) -> Path | None:
    unified, _ = cgroups.parse_self_cgroup(proc_cgroup.read_text())
    relative = unified.strip().lstrip("/") if unified is not None else None
    mount = None
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            mount = left.split()[4]
    if relative is None or mount is None:
        return None
    return Path(mount) / relative


def probe_cgroup(
    proc_cgroup: Path = Path("/proc/self/cgroup"),
    mountinfo: Path = Path("/proc/self/mountinfo"),
    pid: int | None = None,
) -> CgroupParent | None:
    """Our own cgroup v2, made ready for per-job children; None (quietly) when impossible.

    A cgroup with processes in it cannot hand controllers to children, so the pilot
    first moves itself into a ``pilot`` leaf, then enables ``+memory`` for the subtree.
    """
    try:
        own = _own_cgroup(proc_cgroup, mountinfo)
        if own is None:
            log.debug("cgroup: no cgroup v2 hierarchy")
            return None
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            log.debug("cgroup: memory controller not available in %s", own)
            return None
        if not os.access(own / "cgroup.subtree_control", os.W_OK):
            log.debug("cgroup: %s is not delegated to us", own)
            return None
        return _enable_memory(own, os.getpid() if pid is None else pid)
    except OSError as exc:
        log.debug("cgroup: cannot use cgroups: %s", exc)
        return None


def _enable_memory(own: Path, pid: int) -> CgroupParent | None:
    leaf = own / "pilot"
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(f"{pid}\n")
    try:
        (own / "cgroup.subtree_control").write_text("+memory\n")
    except OSError as exc:
        (own / "cgroup.procs").write_text(f"{pid}\n")
        with contextlib.suppress(OSError):
            leaf.rmdir()
        log.debug("cgroup: cannot enable the memory controller in %s: %s", own, exc)
        return None
    log.info("cgroup: jobs get their own memory cgroup under %s", own)
    return CgroupParent(own)


class JobCgroup:
    """One job's cgroup: ``memory.max``, membership, OOM count, kill, removal."""

    def __init__(self, parent: CgroupParent, name: str, memory_mb: float | None) -> None:
        self.path = parent.path / name
        self.path.mkdir(exist_ok=True)
        if memory_mb is not None:
            (self.path / "memory.max").write_text(f"{int(memory_mb * (1 << 20))}\n")
            swap = self.path / "memory.swap.max"
            if swap.exists():
                with contextlib.suppress(OSError):
                    swap.write_text("0\n")

    @classmethod
    def create(
        cls, parent: CgroupParent | None, name: str, memory_mb: float | None
    ) -> JobCgroup | None:
        if parent is None:
            return None
        try:
            return cls(parent, name, memory_mb)
        except OSError as exc:
            log.warning("cgroup: cannot create %s: %s", parent.path / name, exc)
            return None

    def add(self, pid: int) -> None:
        try:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
        except OSError as exc:
            log.warning("cgroup: cannot move %d into %s: %s", pid, self.path, exc)

    def oom_kills(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "memory.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def pids(self) -> list[int]:
        with contextlib.suppress(OSError, ValueError):
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        return []

    def kill(self) -> None:
        """SIGKILL everything in the cgroup, even processes the tree lost track of."""
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1\n")
                return
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT,):
                log.debug("cgroup: cannot remove %s: %s", self.path, exc)
