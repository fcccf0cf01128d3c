"""Check facts + batch slot + configuration -> the resource description sent to the matcher.

Keys use DIRAC's names so that the same description serves the stub and DIRAC's
Matcher. CPUTime is normalised: wall-clock seconds left x the CPU power measured by the
``cpu`` check (DB12-style units), minus a safety margin.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pilot import __version__
from pilot.api import NodeFacts
from pilot.config import PilotConfig
from pilot.node.batch import BatchInfo

if TYPE_CHECKING:
    from pilot.node.checking import CheckReport

UNLIMITED_WALL_S = 7 * 86400  # what "no limit" becomes when converted to a CPUTime
DEFAULT_POWER = 1.0  # CPU power when the cpu check did not run


@dataclass(frozen=True)
class ResourceDescription:
    site: str
    grid_ce: str
    ce_queue: str | None
    vo: str | None
    platform: str
    architecture: str
    number_of_processors: int
    max_ram_mb: int | None
    cpu_time: int
    wall_clock_time_left: int
    disk_space_mb: int | None
    number_of_gpus: int
    tags: tuple[str, ...]
    required_tags: tuple[str, ...]
    pilot_reference: str
    pilot_benchmark: float
    release_version: str = __version__

    def as_dict(self) -> dict[str, Any]:
        """The description under DIRAC's names (what goes on the wire)."""
        out: dict[str, Any] = {
            "Site": self.site,
            "GridCE": self.grid_ce,
            "CEQueue": self.ce_queue,
            "VirtualOrganization": self.vo,
            "Platform": self.platform,
            "Architecture": self.architecture,
            "NumberOfProcessors": self.number_of_processors,
            "MaxRAM": self.max_ram_mb,
            "CPUTime": self.cpu_time,
            "WallClockTimeLeft": self.wall_clock_time_left,
            "DiskSpace": self.disk_space_mb,
            "NumberOfGPUs": self.number_of_gpus,
            "Tag": list(self.tags),
            "RequiredTag": list(self.required_tags),
            "PilotReference": self.pilot_reference,
            "PilotBenchmark": self.pilot_benchmark,
            "ReleaseVersion": self.release_version,
        }
        return {k: v for k, v in out.items() if v is not None}

    def with_free(
        self, cores: int, memory_mb: int | None, wall_left: float | None
    ) -> ResourceDescription:
        """The same slot as seen by the next match: only what is still free."""
        wall = self.wall_clock_time_left if wall_left is None else int(wall_left)
        cpu = (
            int(self.cpu_time * wall / self.wall_clock_time_left)
            if self.wall_clock_time_left
            else 0
        )
        return dataclasses.replace(
            self,
            number_of_processors=cores,
            max_ram_mb=memory_mb,
            wall_clock_time_left=wall,
            cpu_time=cpu,
        )


def platform_string() -> str:
    """DIRAC-style platform of this node, e.g. ``Linux_x86_64_glibc-2.36``."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError):
        libc = ""
    flavour = libc.replace(" ", "-", 1) if libc.startswith("glibc ") else "unknown"
    uname = os.uname()
    return f"{uname.sysname}_{uname.machine}_{flavour}"


def describe(
    config: PilotConfig,
    batch: BatchInfo,
    report: CheckReport | None,
    pilot_reference: str,
) -> ResourceDescription:
    facts = NodeFacts.from_results(report.results if report is not None else ())
    check_tags = report.tags if report is not None else ()
    power = facts.cpu_power or DEFAULT_POWER
    cores = config.cores or batch.cores
    memory = config.memory_mb or batch.memory_mb
    wall = batch.time_left()
    wall_s = int(UNLIMITED_WALL_S if wall is None else max(0.0, wall))
    tags = set(config.tags) | set(check_tags)
    if cores > 1:
        tags.add("MultiProcessor")
    return ResourceDescription(
        site=config.site,
        grid_ce=config.ce or socket.gethostname(),
        ce_queue=config.queue,
        vo=config.vo,
        platform=facts.platform or platform_string(),
        architecture=os.uname().machine,
        number_of_processors=cores,
        max_ram_mb=memory,
        cpu_time=int(wall_s * power * (1.0 - config.cpu_margin)),
        wall_clock_time_left=wall_s,
        disk_space_mb=facts.free_disk_mb,
        number_of_gpus=facts.gpus,
        tags=tuple(sorted(tags)),
        required_tags=tuple(sorted(config.required_tags)),
        pilot_reference=pilot_reference,
        pilot_benchmark=power,
    )
