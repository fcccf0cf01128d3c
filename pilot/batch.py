"""Batch-system detection: which system runs us, and how big and long our slot is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

BatchSystem = Literal["slurm", "htcondor", "pbs", "lsf", "sge", "local"]


@dataclass(frozen=True)
class BatchInfo:
    """What the pilot learnt about its slot, and where each value came from."""

    system: BatchSystem
    job_id: str | None
    cores: int
    memory_mb: int | None  # None: unknown (no limit found)
    wall_time_left: float | None  # seconds; None: unlimited / unknown
    sources: Mapping[str, str] = field(default_factory=dict)  # field name -> how it was learnt
    extra: Mapping[str, str] = field(default_factory=dict)  # e.g. queue, node name, MJF values
