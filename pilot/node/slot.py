"""The slot's bookkeeping: its cores, memory and time, what running jobs hold of them,
and what the next match may be offered.

The agent holds a job's share when it starts the job and releases it when the job's
thread is done; everything it decides about taking another job reads this class.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

from pilot.node.resources import ResourceDescription


class JobNeeds(Protocol):
    """What a job asks of the slot (a parsed job description has these)."""

    @property
    def min_processors(self) -> int: ...
    @property
    def max_processors(self) -> int | None: ...
    @property
    def whole_node(self) -> bool: ...
    @property
    def max_ram_mb(self) -> int | None: ...


class Slot:
    """Cores, memory (MB, None: unknown) and time of the batch slot, and who holds what."""

    def __init__(self, desc: ResourceDescription, *, started: float | None = None) -> None:
        self.desc = desc
        start = time.monotonic() if started is None else started
        self.deadline = start + desc.wall_clock_time_left  # time.monotonic() at the slot's end
        self._held: dict[str, tuple[int, int | None]] = {}

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def free(self) -> tuple[int, int | None]:
        """(cores, memory MB) not held by a running job."""
        cores = self.desc.number_of_processors - sum(c for c, _ in self._held.values())
        mem = self.desc.max_ram_mb
        if mem is not None:
            mem -= sum(m or 0 for _, m in self._held.values())
        return cores, mem

    @property
    def busy(self) -> bool:
        return bool(self._held)

    def hold(self, job_id: str, cores: int, memory_mb: int | None) -> None:
        self._held[job_id] = (cores, memory_mb)

    def release(self, job_id: str) -> None:
        self._held.pop(job_id, None)

    def allocation(
        self, needs: JobNeeds | None, free_cores: int, free_mem: int | None
    ) -> tuple[int, int | None]:
        """(cores, memory MB) to give a job out of what is free; a job whose needs are
        unknown (its description did not parse) gets one core."""
        if needs is None:
            return 1, None  # the runner reports the bad JDL
        cores = needs.min_processors
        if needs.whole_node:
            cores = free_cores
        elif needs.max_processors and needs.max_processors > cores:
            cores = min(needs.max_processors, free_cores)
        cores = max(1, min(cores, free_cores))
        mem = needs.max_ram_mb
        if mem is None and self.desc.max_ram_mb is not None:
            mem = self.desc.max_ram_mb * cores // max(1, self.desc.number_of_processors)
        return cores, mem

    def offer(self, cores: int, mem: int | None) -> ResourceDescription:
        """The slot as the next match sees it: free cores, memory and time only."""
        offer = self.desc.with_free(cores, mem, self.time_left())
        tags = set(offer.tags)
        if cores < 2:
            tags.discard("MultiProcessor")
        if self.busy:
            tags.discard("WholeNode")  # part of the node is taken
        return dataclasses.replace(offer, tags=tuple(sorted(tags)))
