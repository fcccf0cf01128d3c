"""One matched job from start to final status: stage in, execute, stage out, report.

Shared by ``pilot run`` (a server backend) and ``pilot local`` (the local backend), so a
job run locally goes through exactly the code a job on a worker node does.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pilot import archive, execute, jdl, sandbox
from pilot.backend import Backend, JobStatus, MatchedJob, Minor, StatusUpdate
from pilot.errors import PilotError, SandboxError

log = logging.getLogger(__name__)

BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "X509_CERT_DIR")


@dataclass(frozen=True)
class JobSettings:
    work_dir: Path
    pilot_reference: str
    site: str
    grace: float = 30.0
    max_output_bytes: int = 100 << 20
    unpack_limits: archive.UnpackLimits = field(default_factory=archive.UnpackLimits)
    keep_job_dir: bool = False
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: JobStatus
    minor: str
    exit_code: int | None
    timing: Mapping[str, float]


def payload_env(
    desc: jdl.JobDescription, job_id: str, settings: JobSettings, job_dir: Path, cores: int
) -> dict[str, str]:
    """The payload's environment: a few basics from the pilot's, our job facts, the JDL's."""
    env = {k: settings.base_env[k] for k in BASE_ENV if k in settings.base_env}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        {
            "HOME": env.get("HOME", str(job_dir)),
            "TMPDIR": str(job_dir / "tmp"),
            "PILOT_JOB_ID": job_id,
            "DIRACJOBID": job_id,
            "JOBID": job_id,
            "PILOT_REFERENCE": settings.pilot_reference,
            "PILOT_SITE": settings.site,
            "DIRACSITE": settings.site,
            "PILOT_JOB_DIR": str(job_dir),
            "NUMBER_OF_PROCESSORS": str(cores),
            "OMP_NUM_THREADS": str(cores),
        }
    )
    env.update(desc.execution_environment)
    return env


def payload_argv(desc: jdl.JobDescription, job_dir: Path) -> tuple[str, ...]:
    """``Executable`` + ``Arguments``; an executable shipped in the sandbox gets its exec bit."""
    exe = desc.executable
    shipped = job_dir / exe
    if (
        not os.path.isabs(exe)
        and shipped.is_file()
        and shipped.resolve().is_relative_to(job_dir.resolve())
    ):
        shipped.chmod(shipped.stat().st_mode | 0o100)
        exe = str(shipped)
    return (exe, *desc.arguments)


class JobRunner:
    """Runs one job; ``cancel`` (set by a Kill command or a signal) stops the payload."""

    def __init__(
        self, backend: Backend, job: MatchedJob, settings: JobSettings, cores: int
    ) -> None:
        self.backend = backend
        self.job = job
        self.settings = settings
        self.cores = cores
        self.cancel = threading.Event()
        self.cancel_reason = "Killed by pilot"
        self.timing: dict[str, float] = {}

    def status(
        self, status: JobStatus | None, minor: str | None, app: str | None = None, **extra: object
    ) -> None:
        self.backend.set_status(self.job, StatusUpdate(status, minor, app, extra=extra))

    def run(self) -> JobOutcome:
        job_id = self.job.job_id
        job_dir = self.settings.work_dir / f"job-{job_id}"
        try:
            desc = jdl.load(self.job.jdl)
        except jdl.JDLError as exc:
            return self._finish(JobStatus.FAILED, f"Invalid JDL: {exc}", None)
        try:
            return self._run(desc, job_dir)
        finally:
            if not self.settings.keep_job_dir:
                shutil.rmtree(job_dir, ignore_errors=True)

    def _run(self, desc: jdl.JobDescription, job_dir: Path) -> JobOutcome:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "tmp").mkdir(exist_ok=True)
        self.status(JobStatus.RUNNING, Minor.DOWNLOADING_IS)
        start = time.monotonic()
        try:
            sandbox.stage_in(self.backend, self.job, desc, job_dir, self.settings.unpack_limits)
        except SandboxError as exc:
            return self._finish(JobStatus.FAILED, str(exc), None)
        self.timing["stage_in"] = time.monotonic() - start
        result = self._execute(desc, job_dir)
        self.status(JobStatus.COMPLETING, Minor.UPLOADING_OS)
        start = time.monotonic()
        note = ""
        try:
            staged = sandbox.stage_out(
                self.backend, self.job, desc, job_dir, self.settings.max_output_bytes
            )
            note = staged.note()
        except PilotError as exc:
            log.error("job %s: output sandbox upload failed: %s", self.job.job_id, exc)
            note = f"output sandbox upload failed: {exc}"
        self.timing["stage_out"] = time.monotonic() - start
        return self._conclude(result, note)

    def _execute(self, desc: jdl.JobDescription, job_dir: Path) -> execute.ExecutionResult:
        spec = execute.ExecutionSpec(
            argv=payload_argv(desc, job_dir),
            cwd=job_dir,
            env=payload_env(desc, self.job.job_id, self.settings, job_dir, self.cores),
            stdout=job_dir / (desc.std_output or ".stdout"),
            stderr=job_dir / (desc.std_error or desc.std_output or ".stderr"),
            cores=self.cores,
            grace=self.settings.grace,
        )
        self.status(JobStatus.RUNNING, Minor.APPLICATION, "Running")
        log.info("job %s: running %s", self.job.job_id, " ".join(spec.argv))
        try:
            result = execute.run(spec, self.cancel)
        except execute.LaunchError as exc:
            result = execute.ExecutionResult(127, None, 0.0, 0.0, str(exc))
        self.timing["payload"] = result.wall_time
        log.info(
            "job %s: payload ended (exit %s, signal %s, %.2f s)",
            self.job.job_id,
            result.exit_code,
            result.signal,
            result.wall_time,
        )
        return result

    def _conclude(self, result: execute.ExecutionResult, note: str) -> JobOutcome:
        if result.reason == "Killed by pilot":
            return self._finish(JobStatus.KILLED, self.cancel_reason, result.exit_code, note)
        if result.reason is not None:
            return self._finish(JobStatus.FAILED, result.reason, result.exit_code, note)
        if result.signal is not None:
            return self._finish(
                JobStatus.FAILED, f"Payload killed by signal {result.signal}", None, note
            )
        if result.exit_code != 0:
            minor = f"Payload failed with exit code {result.exit_code}"
            return self._finish(JobStatus.FAILED, minor, result.exit_code, note)
        return self._finish(JobStatus.DONE, Minor.EXECUTION_COMPLETE, 0, note)

    def _finish(
        self, status: JobStatus, minor: str, code: int | None, note: str = ""
    ) -> JobOutcome:
        app = f"exit code {code}" if code is not None else status.value
        if note:
            app = f"{app}; {note}"
        log.info("job %s: %s (%s)", self.job.job_id, status, minor)
        try:
            self.status(status, minor, app, Timing=dict(self.timing))
        except PilotError as exc:
            log.error("job %s: could not report final status %s: %s", self.job.job_id, status, exc)
        return JobOutcome(self.job.job_id, status, minor, code, dict(self.timing))
