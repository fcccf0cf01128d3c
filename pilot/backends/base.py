"""The seam between the agent and whatever hands out jobs (the stub, or DIRAC).

The agent talks to a :class:`Backend` only; :mod:`pilot.backends.stub` implements it for the
matcher stub's REST API and :mod:`pilot.backends.dirac` for DIRAC's DISET services.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class JobStatus(StrEnum):
    """DIRAC's major job statuses."""

    RECEIVED = "Received"
    WAITING = "Waiting"
    MATCHED = "Matched"
    RUNNING = "Running"
    COMPLETING = "Completing"
    DONE = "Done"
    FAILED = "Failed"
    STALLED = "Stalled"
    KILLED = "Killed"
    DELETED = "Deleted"


FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED, JobStatus.DELETED})


class Minor(StrEnum):
    """DIRAC's minor statuses used by the pilot (free text is allowed too)."""

    MATCHED = "Assigned"
    PILOT_AGENT = "Job accepted by pilot"
    DOWNLOADING_IS = "Downloading InputSandbox"
    DOWNLOADING_ID = "Downloading InputData"
    APPLICATION = "Application"
    UPLOADING_OS = "Uploading Output Sandbox"
    UPLOADING_OD = "Uploading Output Data"
    EXECUTION_COMPLETE = "Execution Complete"
    # what DIRAC's JobWrapper reports besides (backends with ``jobwrapper_rules``)
    APP_SUCCESS = "Application Finished Successfully"
    APP_ERRORS = "Application Finished With Errors"
    OS_UPLOADED = "Output Sandbox Uploaded"
    OD_UPLOADED = "Output Data Uploaded"


# MatchedJob.extra key: False when the backend knows the job's owner has no stored proxy
# (the pilot then makes no key pair for a delegation that cannot happen)
OWNER_PROXY = "OwnerProxy"


@dataclass(frozen=True)
class MatchedJob:
    """A job the backend handed to this pilot."""

    job_id: str
    jdl: str  # the job's JDL text, parsed by pilot.job.jdl
    token: str | None = None  # lets this pilot update this job and nothing else (stub)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatusUpdate:
    status: JobStatus | None = None
    minor: str | None = None
    application: str | None = None
    timestamp: float = field(default_factory=time.time)
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. timing of the final report


class Backend(Protocol):
    """What the agent needs from a workload manager."""

    name: str

    def register(self, stamp: str, info: Mapping[str, Any]) -> None:
        """Announce the pilot (batch info, check report, resources)."""

    def match(self, resources: Mapping[str, Any]) -> MatchedJob | None:
        """Ask for one job fitting ``resources`` (DIRAC names); None when nothing matches."""

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None: ...

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        """Send the job's vital signs; returns the server's commands (e.g. ``"Kill"``)."""

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        """Pending commands ``(job_id, command)`` for these jobs, asked cheaply and often
        (empty where the server has no such call: commands then come with heartbeats)."""

    def fetch_input_sandbox(self, job: MatchedJob, dest_dir: Path) -> list[Path]:
        """Download the job's input sandbox archives into ``dest_dir``; returns their paths."""

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        """Upload the packed output sandbox and attach it to the job."""

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        """Download the catalogue file ``lfn`` (``LFN:/...``) to ``dest``, checksum verified."""

    def store_lfn(self, job: MatchedJob, lfn: str, source: Path) -> None:
        """Upload ``source`` and register it in the catalogue as ``lfn``."""

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        """Have the job owner's stored proxy sign ``request_pem`` (a PEM certificate
        request) for ``lifetime`` seconds; the new proxy and its chain as PEM
        certificates. :class:`~pilot.errors.NoStoredProxy` when the owner has none."""

    def upload_pilot_log(self, stamp: str, text: str) -> None: ...

    def close(self) -> None: ...
