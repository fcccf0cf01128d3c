"""Batch-system detection: which system runs us, and how big and long our slot is.

:func:`detect` asks, in this order, and keeps the lowest of every limit it finds:

1. the batch system (HTCondor, Slurm, PBS/Torque, LSF, SGE; see :mod:`pilot.node.batch_systems`),
   or "local" when none is found (cores from CPU affinity, memory from total RAM);
2. Machine/Job Features (``$JOBFEATURES``/``$MACHINEFEATURES`` directories of one-value
   files), which fill gaps and bring shutdown times;
3. the cgroup of this process (v1 or v2, limits of every ancestor included) and the CPU
   affinity mask, which cap cores and memory when lower than what the batch system says.

Every value carries its source in :attr:`BatchInfo.sources`. Commands run through
:func:`pilot.proc.run` with a short timeout; a hung or missing command falls through to
the next source. Wall time is learnt as a deadline and stamped against
:func:`time.monotonic`, so :meth:`BatchInfo.time_left` stays right when the clock jumps.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pilot import cgroups, proc
from pilot.node.batch_systems import BatchSystem, Probe, Sourced, SystemReport, identify
from pilot.proc import CommandResult

__all__ = ["BatchInfo", "BatchSystem", "detect", "read_mjf"]

log = logging.getLogger(__name__)

T = TypeVar("T", int, float)

MB = 1024 * 1024
_MJF_JOB_KEYS = (
    "allocated_cpu",
    "wall_limit_secs",
    "cpu_limit_secs",
    "jobstart_secs",
    "max_rss_bytes",
    "max_swap_bytes",
    "scratch_limit_bytes",
    "shutdowntime_job",
    "hs06_job",
)
_MJF_MACHINE_KEYS = ("total_cpu", "shutdowntime", "grace_secs", "hs06")
_NOT_FOUND = "none found"


@dataclass(frozen=True)
class BatchInfo:
    """What the pilot learnt about its slot, and where each value came from."""

    system: BatchSystem
    job_id: str | None
    cores: int
    memory_mb: int | None  # None: unknown (no limit found)
    wall_time_left: float | None  # seconds at detected_at; None: unlimited / unknown
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> how it was learnt
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. queue, node name, MJF values
    detected_at: float = 0.0  # time.monotonic() when wall_time_left was measured; 0: not stamped

    @property
    def reference(self) -> str:
        """A pilot reference: ``slurm:12345``, or ``local:<hostname>:<pid>`` without a job id."""
        if self.job_id:
            return f"{self.system}:{self.job_id}"
        host = self.extra.get("hostname") or socket.gethostname()
        return f"{self.system}:{host}:{self.extra.get('pid') or os.getpid()}"

    def time_left(self, now: float | None = None) -> float | None:
        """Wall time left at monotonic time ``now`` (default: now); ``None`` if unlimited.

        An info not stamped by :func:`detect` (``detected_at == 0``) reports
        ``wall_time_left`` unchanged.
        """
        if self.wall_time_left is None:
            return None
        if self.detected_at <= 0:
            return self.wall_time_left
        current = time.monotonic() if now is None else now
        return max(0.0, self.wall_time_left - max(0.0, current - self.detected_at))


# --------------------------------------------------------------------------- cgroups


def _cgroup_candidates(found: cgroups.Limits) -> tuple[Sourced[int] | None, Sourced[int] | None]:
    """(whole cores, memory MB) that the cgroup's limits allow, with the file they came from.

    A fractional CPU quota is rounded down, to at least one core."""
    v2 = found.version == "v2"
    where = f"cgroup {found.version}"
    cores = memory = None
    if found.cpus is not None:
        source = f"{where} {'cpu.max' if v2 else 'cpu.cfs_quota_us'}"
        cores = Sourced(max(1, math.floor(found.cpus + 1e-9)), source)
    if found.memory_bytes is not None:
        source = f"{where} {'memory.max' if v2 else 'memory.limit_in_bytes'}"
        memory = Sourced(found.memory_bytes // MB, source)
    return cores, memory


# --------------------------------------------------------------------------- Machine/Job Features


def read_mjf(env: Mapping[str, str]) -> dict[str, str]:
    """Machine/Job Features values as ``job.<key>`` / ``machine.<key>`` -> text.

    Only local directories are read (an ``http(s)://`` location would need the network
    during detection, which must stay fast).
    """
    values: dict[str, str] = {}
    for var, prefix, keys in (
        ("JOBFEATURES", "job", _MJF_JOB_KEYS),
        ("MACHINEFEATURES", "machine", _MJF_MACHINE_KEYS),
    ):
        location = env.get(var, "")
        if not location or "://" in location:
            if location:
                log.info("%s=%s is not a local directory; ignored", var, location)
            continue
        for key in keys:
            text = cgroups.read_small(Path(location) / key)
            if text:
                values[f"{prefix}.{key}"] = text
    return values


def _mjf_number(mjf: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(mjf[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _mjf_candidates(
    mjf: Mapping[str, str], now: float
) -> tuple[list[Sourced[int]], list[Sourced[int]], list[Sourced[float]]]:
    """(cores, memory MB, deadlines) that Machine/Job Features state."""
    cores = [
        Sourced(int(n), key.replace(".", "features ", 1))
        for key in ("job.allocated_cpu", "machine.total_cpu")
        if (n := _mjf_number(mjf, key)) is not None and n >= 1
    ]
    memory = []
    if (rss := _mjf_number(mjf, "job.max_rss_bytes")) is not None and rss >= MB:
        memory.append(Sourced(int(rss) // MB, "jobfeatures max_rss_bytes"))
    deadlines = [
        Sourced(t, key.replace(".", "features ", 1))
        for key in ("job.shutdowntime_job", "machine.shutdowntime")
        if (t := _mjf_number(mjf, key)) is not None
    ]
    if (limit := _mjf_number(mjf, "job.wall_limit_secs")) is not None:
        start = _mjf_number(mjf, "job.jobstart_secs")
        source = "jobfeatures jobstart_secs + wall_limit_secs"
        if start is None:
            start, source = now, "jobfeatures wall_limit_secs (start unknown: from now)"
        deadlines.append(Sourced(start + limit, source))
    return cores, memory, deadlines


# --------------------------------------------------------------------------- detection


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def physical_memory_mb() -> int:
    """Total RAM, as /proc/meminfo's MemTotal (the kernel's sysinfo totalram)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB


def _lowest(candidates: Iterable[Sourced[T] | None]) -> Sourced[T] | None:
    """The lowest candidate; on a tie the first one (the batch system's) is kept."""
    present = [c for c in candidates if c is not None]
    return min(present, key=lambda c: c.value) if present else None


def detect(
    env: Mapping[str, str] | None = None,
    *,
    run: Callable[..., CommandResult] = proc.run,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    affinity: Callable[[], int] | None = None,
    total_memory_mb: Callable[[], int] | None = None,
    now: Callable[[], float] = time.time,
    command_timeout: float = 5.0,
) -> BatchInfo:
    """Find the batch system, job id, cores, memory and wall time left of this slot."""
    environ: Mapping[str, str] = os.environ if env is None else env
    report = identify(Probe(environ, run, now, command_timeout))
    if report is None:
        report = SystemReport("local", None, "no batch-system variables")
    mjf = read_mjf(environ)
    mjf_cores, mjf_memory, mjf_deadlines = _mjf_candidates(mjf, now())
    cgroup = cgroups.read_limits(cgroup_root, proc_self_cgroup)
    cgroup_cores, cgroup_memory = _cgroup_candidates(cgroup)
    cpus = Sourced((affinity or usable_cpus)(), "sched_getaffinity")
    cores = _lowest([report.cores, *mjf_cores, cpus, cgroup_cores]) or cpus
    base_memory = report.memory_mb
    if report.system == "local":
        base_memory = Sourced((total_memory_mb or physical_memory_mb)(), "total RAM (sysconf)")
    memory = _lowest([base_memory, *mjf_memory, cgroup_memory])
    deadline = _lowest([report.deadline, *mjf_deadlines])
    wall_now, stamp = now(), time.monotonic()
    info = BatchInfo(
        system=report.system,
        job_id=report.job_id,
        cores=max(1, cores.value),
        memory_mb=memory.value if memory is not None else None,
        wall_time_left=max(0.0, deadline.value - wall_now) if deadline is not None else None,
        sources=_sources(report, cores, memory, deadline),
        extra=_extra(report, mjf, cgroup),
        detected_at=stamp,
    )
    _log_info(info)
    return info


def _sources(
    report: SystemReport,
    cores: Sourced[int],
    memory: Sourced[int] | None,
    deadline: Sourced[float] | None,
) -> dict[str, str]:
    if deadline is not None:
        wall = deadline.source
    elif report.unlimited is not None:
        wall = f"{report.unlimited} (UNLIMITED)"
    else:
        wall = _NOT_FOUND
    return {
        "system": report.found_by,
        "cores": cores.source,
        "memory_mb": memory.source if memory is not None else _NOT_FOUND,
        "wall_time_left": wall,
    }


def _extra(report: SystemReport, mjf: Mapping[str, str], cgroup: cgroups.Limits) -> dict[str, str]:
    extra = dict(report.extra)
    extra.update({f"mjf.{key}": value for key, value in mjf.items()})
    if cgroup.version is not None:
        extra["cgroup"] = f"{cgroup.version}:{cgroup.path or '/'}"
    if cgroup.cpus is not None:
        extra["cgroup_cpu_quota"] = f"{cgroup.cpus:.2f}"
    extra["hostname"] = socket.gethostname()
    extra["pid"] = str(os.getpid())
    return extra


def _log_info(info: BatchInfo) -> None:
    left = "unlimited" if info.wall_time_left is None else f"{info.wall_time_left:.0f} s"
    memory = "unknown" if info.memory_mb is None else f"{info.memory_mb} MB"
    log.info(
        "batch: %s, %d cores (%s), memory %s (%s), wall time left %s (%s)",
        info.reference,
        info.cores,
        info.sources["cores"],
        memory,
        info.sources["memory_mb"],
        left,
        info.sources["wall_time_left"],
    )
