"""What a running payload consumes, and which of its limits it broke.

:class:`Sampler` turns a job's process tree (:mod:`.proctable`) and directory into
:class:`Usage` (CPU, memory, processes, disk); :class:`LimitChecker` compares it with the
job's :class:`Limits`. Every "Job exceeded ..." minor status the pilot reports is worded
here, whoever noticed the excess (the sampler, the memory cgroup, the output pump).

Units: seconds for times, MB (2**20 bytes) for memory and disk.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pilot.job.proctable import ProcessTree, ProcStat, reap_strays

MB = 1 << 20
DISK_WALK_BUDGET = 0.02  # at most this fraction of wall time spent measuring the job dir


# -- usage and limits -------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    wall: float  # seconds since the payload started
    cpu: float  # seconds, whole process tree
    rss_mb: float
    vsize_mb: float
    processes: int
    disk_mb: float | None  # job directory; None when not measured yet
    free_mb: float | None  # free space where the job directory is


@dataclass(frozen=True)
class Limits:
    """What one job may use; None switches a limit off."""

    wall_seconds: float | None = None
    wall_source: str = ""  # e.g. "WallTime 600 s", "batch slot ends"
    cpu_normalised: float | None = None  # JDL CPUTime x cores, in normalised seconds
    benchmark: float = 1.0  # the node's CPU power: normalised = seconds x benchmark
    memory_mb: float | None = None
    memory_source: str = ""  # e.g. "MaxRAM 100 MB"
    disk_mb: float | None = None
    min_free_disk_mb: float | None = None
    max_processes: int | None = None
    stalled_window: float | None = None
    stalled_cpu_fraction: float = 0.05


def dir_size_mb(path: Path) -> float:
    """Disk blocks used under ``path`` (not following links), in MB."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total / MB


def free_mb(path: Path) -> float | None:
    try:
        return shutil.disk_usage(path).free / MB
    except OSError:
        return None


class Sampler:
    """Measures one job: its process tree every call, its directory at a bounded cost."""

    def __init__(self, tree: ProcessTree, job_dir: Path, started: float) -> None:
        self.tree = tree
        self.job_dir = job_dir
        self.started = started
        self.disk_mb: float | None = None
        self.next_walk = 0.0

    def sample(self) -> tuple[Usage, list[ProcStat]]:
        table = self.tree.nearby()
        members = self.tree.members(table)
        if self.tree.reap(members):
            members = self.tree.members(self.tree.nearby())
        reap_strays(table)
        live = [s for s in members if not s.zombie]
        now = time.monotonic()
        if now >= self.next_walk:
            self.disk_mb = dir_size_mb(self.job_dir)
            spent = time.monotonic() - now
            self.next_walk = now + spent / DISK_WALK_BUDGET
        usage = Usage(
            wall=now - self.started,
            cpu=self.tree.cpu(members),
            rss_mb=sum(s.rss for s in live) / MB,
            vsize_mb=sum(s.vsize for s in live) / MB,
            processes=len(live),
            disk_mb=self.disk_mb,
            free_mb=free_mb(self.job_dir),
        )
        return usage, live


def memory_exceeded(limits: Limits) -> str:
    """The minor status of a job over its memory limit (seen by sampling or by the cgroup)."""
    return f"Job exceeded memory limit ({limits.memory_source or f'{limits.memory_mb:.0f} MB'})"


def output_exceeded(streams: str, max_stdout_mb: float) -> str:
    """The minor status of a job whose output streams were cut at ``max_stdout_mb``."""
    return f"Job exceeded output limit ({streams} truncated at {max_stdout_mb:g} MB)"


class LimitChecker:
    """Which limit a job broke, as the minor status to report; keeps the stall window."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.history: collections.deque[tuple[float, float]] = collections.deque()

    def check(self, usage: Usage) -> str | None:
        for rule in (
            self._memory,
            self._cpu,
            self._wall,
            self._processes,
            self._disk,
            self._stalled,
        ):
            reason = rule(usage)
            if reason is not None:
                return reason
        return None

    def _memory(self, usage: Usage) -> str | None:
        limit = self.limits.memory_mb
        if limit is not None and usage.rss_mb > limit:
            return memory_exceeded(self.limits)
        return None

    def _cpu(self, usage: Usage) -> str | None:
        limit = self.limits.cpu_normalised
        if limit is not None and usage.cpu * self.limits.benchmark > limit:
            return f"Job exceeded CPU time limit (CPUTime {limit:.0f} normalised s)"
        return None

    def _wall(self, usage: Usage) -> str | None:
        limit = self.limits.wall_seconds
        if limit is not None and usage.wall > limit:
            return f"Job exceeded wall clock time limit ({self.limits.wall_source})"
        return None

    def _processes(self, usage: Usage) -> str | None:
        limit = self.limits.max_processes
        if limit is not None and usage.processes > limit:
            return f"Job exceeded process limit ({limit} processes)"
        return None

    def _disk(self, usage: Usage) -> str | None:
        limit, floor = self.limits.disk_mb, self.limits.min_free_disk_mb
        if limit is not None and usage.disk_mb is not None and usage.disk_mb > limit:
            return f"Job exceeded disk limit (job directory over {limit:.0f} MB)"
        if floor is not None and usage.free_mb is not None and usage.free_mb < floor:
            return f"Job exceeded disk limit (free space below {floor:.0f} MB)"
        return None

    def _stalled(self, usage: Usage) -> str | None:
        window = self.limits.stalled_window
        if window is None or window <= 0:
            return None
        self.history.append((usage.wall, usage.cpu))
        while len(self.history) > 1 and self.history[1][0] <= usage.wall - window:
            self.history.popleft()
        then, cpu_then = self.history[0]
        if usage.wall - then < window:
            return None
        fraction = self.limits.stalled_cpu_fraction
        if (usage.cpu - cpu_then) / (usage.wall - then) < fraction:
            return f"Job stalled: CPU/wall below {fraction:.0%} for {window:.0f} s"
        return None
