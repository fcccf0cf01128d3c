"""The seam between the agent and whatever hands out jobs (the stub, or DIRAC).

The agent talks to a :class:`Backend` only, and tells it what to fetch by :class:`Inputs`
(each entry sorted once by :func:`classify`), never by JDL text.
:mod:`pilot.backends.stub` implements it for the matcher stub's REST API and
:mod:`pilot.backends.dirac` for DIRAC's DISET services.
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
    """DIRAC's minor statuses written by the pilot and the stub (free text is allowed too,
    for messages with details such as "Job exceeded ...")."""

    JOB_ACCEPTED = "Job accepted"
    PILOT_AGENT_SUBMISSION = "Pilot Agent Submission"
    MATCHED = "Assigned"
    PILOT_AGENT = "Job accepted by pilot"
    DOWNLOADING_IS = "Downloading InputSandbox"
    DOWNLOADING_ID = "Downloading InputData"
    APPLICATION = "Application"
    UPLOADING_OS = "Uploading Output Sandbox"
    UPLOADING_OD = "Uploading Output Data"
    EXECUTION_COMPLETE = "Execution Complete"
    KILLED_BY_USER = "Killed by user"
    KILLED_BY_PILOT = "Killed by pilot"
    NO_LONGER_ASSIGNED = "Job no longer assigned to this pilot"
    KILL_REQUESTED = "Kill requested"
    DELETED_BY_USER = "Deleted by user"
    STALLED_NO_PILOT = "Job stalled: pilot not running"
    RESCHEDULED = "Job Rescheduled"
    MAX_RESCHEDULES = "Maximum of reschedulings reached"

    # what DIRAC's JobWrapper reports besides (backends with ``jobwrapper_rules``)
    APP_SUCCESS = "Application Finished Successfully"
    APP_ERRORS = "Application Finished With Errors"
    OS_UPLOADED = "Output Sandbox Uploaded"
    OD_UPLOADED = "Output Data Uploaded"


# MatchedJob.extra key: False when the backend knows the job's owner has no stored proxy
# (the pilot then makes no key pair for a delegation that cannot happen)
OWNER_PROXY = "OwnerProxy"
# MatchedJob.extra key: False when the job has no owner identity (no payload token to ask for)
OWNER_IDENTITY = "OwnerIdentity"


class InputKind(StrEnum):
    """Where an ``InputSandbox`` entry comes from (see :func:`classify`)."""

    SANDBOX = "SB"  # SB:<ref>, an archive in the backend's sandbox store
    LFN = "LFN"  # LFN:<path> (any case), a file in the backend's catalogue
    URL = "URL"  # http(s)://..., fetched directly without the pilot's credentials
    LOCAL = "local"  # a plain file name: local to the submitter, packed into an SB: archive


URL_PREFIXES = ("https://", "http://")


def classify(entry: str) -> InputKind:
    """The one place that tells the kinds of input entry apart (pilot, stub, backends)."""
    if entry.startswith("SB:"):
        return InputKind.SANDBOX
    if entry[:4].upper() == "LFN:":
        return InputKind.LFN
    if entry.startswith(URL_PREFIXES):
        return InputKind.URL
    return InputKind.LOCAL


@dataclass(frozen=True)
class Inputs:
    """A job's ``InputSandbox`` entries sorted by kind, each kind in the job's order;
    LFNs are spelt ``LFN:<path>`` whatever case the JDL used."""

    sandboxes: tuple[str, ...] = ()
    lfns: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    local: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> Inputs:
        kinds = [(classify(e), e) for e in entries]
        return cls(
            sandboxes=tuple(e for k, e in kinds if k is InputKind.SANDBOX),
            lfns=tuple("LFN:" + e[4:] for k, e in kinds if k is InputKind.LFN),
            urls=tuple(e for k, e in kinds if k is InputKind.URL),
            local=tuple(e for k, e in kinds if k is InputKind.LOCAL),
        )


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

    def fetch_input_sandbox(self, job: MatchedJob, inputs: Inputs, dest_dir: Path) -> list[Path]:
        """Download the job's input sandbox archives (``inputs.sandboxes``; in local mode
        ``inputs.local``, packed) into ``dest_dir``; returns their paths. LFNs and URLs are
        fetched by the caller, through :meth:`fetch_lfn` and directly."""

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        """Upload the packed output sandbox and attach it to the job."""

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        """Download the catalogue file ``lfn`` (``LFN:/...``) to ``dest``, checksum verified."""

    def store_lfn(
        self, job: MatchedJob, lfn: str, source: Path, output_se: str | None = None
    ) -> None:
        """Upload ``source`` and register it in the catalogue as ``lfn``; ``output_se`` is
        the job's ``OutputSE`` (comma-separated storage names, for backends that have them)."""

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        """Have the job owner's stored proxy sign ``request_pem`` (a PEM certificate
        request) for ``lifetime`` seconds; the new proxy and its chain as PEM
        certificates. :class:`~pilot.errors.NoStoredProxy` when the owner has none."""

    def upload_pilot_log(self, stamp: str, text: str) -> None: ...

    def close(self) -> None: ...
