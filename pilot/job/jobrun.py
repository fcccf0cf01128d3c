"""One matched job from start to final status: stage in, execute, stage out, report.

Shared by ``pilot run`` (a server backend) and ``pilot local`` (the local backend), so a
job run locally goes through exactly the code a job on a worker node does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pilot.backends.base import (
    OWNER_IDENTITY,
    Backend,
    JobStatus,
    MatchedJob,
    Minor,
    StatusUpdate,
)
from pilot.errors import NoStoredProxy, PilotError, SandboxError
from pilot.job import archive, bearer, delegation, execute, heartbeat, isolation, jdl, sandbox
from pilot.job.isolation import NO_ISOLATION, CgroupParent, Isolation
from pilot.job.limits import Limits

log = logging.getLogger(__name__)

# What batch systems send (often to the whole job tree) before they end a slot: SIGTERM
# (Slurm, PBS, LSF, HTCondor), SIGINT, SIGUSR1 (Grid Engine's soft limit s_rt), SIGUSR2
# (Grid Engine's qsub -notify, before its SIGKILL), SIGXCPU (CPU-time limits). The pilot
# stops on each (pilot.cli installs the handlers); a payload killed by one is reported
# with the pilot's reason.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)

BASE_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "X509_CERT_DIR", "X509_CERT_FILE"
)  # fmt: skip
WALL_TIME_KEYS = ("WallTime", "MaxWallTime", "WallClockTime")
STAGE_OUT_RESERVE_S = 60.0  # kept back from the slot's end for stage-out and the report


def no_url_fetcher(url: str, dest: Path) -> None:
    raise SandboxError(f"Cannot fetch input {url}: this pilot has no URL fetcher")


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
    # the watchdog
    sample_interval: float = 5.0
    heartbeat_interval: float = 300.0
    stalled_window: float | None = 1800.0
    stalled_cpu_fraction: float = 0.05
    max_stdout_bytes: int = 50 << 20
    max_job_disk_mb: int | None = None
    min_free_disk_mb: int | None = 100
    max_processes: int | None = None
    benchmark: float = 1.0  # the node's CPU power, to normalise CPU seconds
    # isolation
    isolation: Isolation = NO_ISOLATION
    hidden_paths: tuple[Path, ...] = ()  # the pilot's credentials, masked in the sandbox
    cgroup: CgroupParent | None = None
    # downloads an http(s):// input without the pilot's credentials (given by the agent)
    fetch_url: Callable[[str, Path], None] = field(default=no_url_fetcher)
    # the payload's delegated proxy
    delegation: delegation.DelegationPolicy = field(
        default_factory=lambda: delegation.DelegationPolicy()
    )


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: JobStatus
    minor: str
    exit_code: int | None
    timing: Mapping[str, float]


def payload_env(
    desc: jdl.JobDescription,
    job_id: str,
    settings: JobSettings,
    job_dir: Path,
    cores: int,
    proxy: Path | None = None,
    token: Path | None = None,
) -> dict[str, str]:
    """The payload's environment: a few basics from the pilot's, our job facts, the JDL's,
    ``X509_USER_PROXY`` when the job has a delegated proxy of its own and
    ``BEARER_TOKEN_FILE`` when it has a bearer token of its own."""
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
    env.pop("X509_USER_PROXY", None)  # only ever the job's own delegated proxy
    if proxy is not None:
        env["X509_USER_PROXY"] = str(proxy)
    for name in ("BEARER_TOKEN", "BEARER_TOKEN_FILE"):  # only ever the job's own token
        env.pop(name, None)
    if token is not None:
        env["BEARER_TOKEN_FILE"] = str(token)
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


def stream_path(job_dir: Path, name: str | None, default: str) -> Path:
    """Where StdOutput/StdError go: inside the job directory, whatever the JDL says."""
    path = job_dir / (name or default)
    if not path.resolve().is_relative_to(job_dir.resolve()):
        log.warning("output file %r is outside the job directory: using its base name", name)
        base = Path(name or default).name
        path = job_dir / (base if base not in ("", ".", "..") else default)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _seconds(desc: jdl.JobDescription, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = jdl.get(desc.attrs, key)
        number = jdl.as_number(value) if value is not None else None
        if number is not None and number > 0:
            return float(number)
    return None


def job_limits(
    desc: jdl.JobDescription,
    settings: JobSettings,
    cores: int,
    memory_mb: int | None,
    slot_left: float | None,
) -> Limits:
    """What this job may use: its JDL's requests, its share of the slot, the pilot's caps."""
    wall, wall_source = _seconds(desc, WALL_TIME_KEYS), ""
    if wall is not None:
        wall_source = f"WallTime {wall:.0f} s"
    if slot_left is not None:
        slot_wall = max(1.0, slot_left - settings.grace - STAGE_OUT_RESERVE_S)
        if wall is None or slot_wall < wall:
            wall, wall_source = slot_wall, "batch slot ends"
    cpu = _seconds(desc, ("CPUTime", "MaxCPUTime"))
    source = f"MaxRAM {memory_mb} MB" if desc.max_ram_mb else f"slot share {memory_mb} MB"
    return Limits(
        wall_seconds=wall,
        wall_source=wall_source,
        cpu_normalised=cpu * cores if cpu is not None else None,
        benchmark=settings.benchmark,
        memory_mb=memory_mb,
        memory_source=source,
        disk_mb=settings.max_job_disk_mb,
        min_free_disk_mb=settings.min_free_disk_mb,
        max_processes=settings.max_processes,
        stalled_window=settings.stalled_window,
        stalled_cpu_fraction=settings.stalled_cpu_fraction,
    )


def application_notes(result: execute.ExecutionResult, max_stdout_bytes: int) -> list[str]:
    notes = []
    for stream in result.truncated:
        notes.append(f"{stream} truncated at {max_stdout_bytes / (1 << 20):g} MB")
    if result.leftovers:
        notes.append(f"{result.leftovers} leftover process(es) killed")
    notes.extend(f"{why} (not saved)" for why in result.unsaved)
    return notes


class JobRunner:
    """Runs one job; ``cancel`` (a kill command, a signal to the pilot) stops the payload."""

    def __init__(
        self,
        backend: Backend,
        job: MatchedJob,
        settings: JobSettings,
        cores: int,
        memory_mb: int | None = None,
        slot_deadline: float | None = None,
        match_seconds: float | None = None,
        desc: jdl.JobDescription | jdl.JDLError | None = None,
    ) -> None:
        self.backend = backend
        self.job = job
        # parsed once, by whoever matched the job (else here); a JDLError: the JDL is bad
        self.desc = desc
        self.settings = settings
        self.cores = cores
        self.memory_mb = memory_mb
        self.slot_deadline = slot_deadline  # time.monotonic() when the batch slot ends
        self.cancel = execute.Cancel()
        self.timing: dict[str, float] = {}
        self.launched = threading.Event()  # set when the payload starts, or will not
        self.payload_proxy: delegation.PayloadProxy | None = None
        self.payload_token: bearer.PayloadToken | None = None
        self.notes: list[str] = []  # for the final application status
        self.keep_job_dir = False  # kept when its output could not be delivered
        if match_seconds is not None:
            self.timing["match"] = match_seconds
        self.monitor = heartbeat.Monitor(settings.work_dir)
        self.beat: heartbeat.Heartbeat | None = None

    def status(
        self, status: JobStatus | None, minor: str | None, app: str | None = None, **extra: object
    ) -> None:
        self.backend.set_status(self.job, StatusUpdate(status, minor, app, extra=extra))

    def run(self) -> JobOutcome:
        try:
            return self._parse_and_run()
        finally:
            self.launched.set()  # however the job ended: it launches nothing (more)

    def _parse_and_run(self) -> JobOutcome:
        job_id = self.job.job_id
        job_dir = self.settings.work_dir / f"job-{job_id}"
        desc = self.desc
        if desc is None:
            try:
                desc = jdl.load(self.job.jdl)
            except jdl.JDLError as exc:
                desc = exc
        if isinstance(desc, jdl.JDLError):
            return self._finish(JobStatus.FAILED, f"Invalid JDL: {desc}", None)
        # started once the job is reported Running, stopped before its final status: a beat
        # on either side of those could put the job back to Running (DIRAC's heartbeat does
        # that to a Matched job, and its read-then-write may land after a later update)
        self.beat = heartbeat.Heartbeat(
            self.backend,
            self.job,
            self.monitor,
            self.settings.heartbeat_interval,
            self.cancel.set,
        )
        try:
            return self._run(desc, job_dir)
        finally:
            self.beat.stop()
            if not self.settings.keep_job_dir and not self.keep_job_dir:
                shutil.rmtree(job_dir, ignore_errors=True)

    def _run(self, desc: jdl.JobDescription, job_dir: Path) -> JobOutcome:
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "tmp").mkdir(exist_ok=True)
        failure = self._get_payload_proxy(desc, job_dir)
        try:
            if failure is None:
                failure = self._get_payload_token(desc, job_dir)
            if failure is not None:
                return failure
            return self._stage_and_run(desc, job_dir)
        finally:
            self._remove_credentials()
            act_as_owner = getattr(self.backend, "use_owner_proxy", None)
            if self.payload_proxy is not None and act_as_owner is not None:
                act_as_owner(self.job, None)  # the job is over: forget its owner's proxy

    def _remove_credentials(self) -> None:
        if self.payload_proxy is not None:
            self.payload_proxy.remove()
        if self.payload_token is not None:
            self.payload_token.remove()

    def _credential_lifetime(self, desc: jdl.JobDescription) -> int:
        """Seconds the payload's proxy or token must last: the job's wall time, or the
        slot's time left if that ends first, plus the policy's margin, capped."""
        wall = _seconds(desc, WALL_TIME_KEYS)
        if self.slot_deadline is not None:
            slot_left = self.slot_deadline - time.monotonic()
            wall = slot_left if wall is None else min(wall, slot_left)
        return self.settings.delegation.lifetime(wall)

    def _get_payload_token(self, desc: jdl.JobDescription, job_dir: Path) -> JobOutcome | None:
        """The job's bearer token, where the backend mints them (None: go on, with or
        without one; else the failure, as for a failed delegation)."""
        mint = bearer.minter_of(self.backend)
        if mint is None:
            return None
        if self.job.extra.get(OWNER_IDENTITY) is False:  # the match said: nothing to mint
            log.info("job %s: runs without a payload token: no owner", self.job.job_id)
            return None
        lifetime = self._credential_lifetime(desc)
        renew = self.settings.delegation.renew_fraction
        token = bearer.PayloadToken(mint, self.job, job_dir, lifetime, renew)
        try:
            if not token.obtain():
                log.info("job %s: runs without a payload token: no owner", self.job.job_id)
                return None
        except PilotError as exc:
            log.error("job %s: payload token: %s", self.job.job_id, exc)
            return self._finish(JobStatus.FAILED, f"{bearer.FAILED_MINOR}: {exc}", None)
        token.start_renewal()
        self.payload_token = token
        return None

    def _get_payload_proxy(self, desc: jdl.JobDescription, job_dir: Path) -> JobOutcome | None:
        """The job's delegated proxy (None: go on, with or without one; else the failure)."""
        policy = self.settings.delegation
        must = delegation.required(jdl.get(desc.attrs, "PayloadProxy"))
        if policy.mode == "off":
            if must:
                minor = f"{delegation.FAILED_MINOR}: payload proxies are off on this pilot"
                return self._finish(JobStatus.FAILED, minor, None)
            return None
        payload_proxy = delegation.PayloadProxy(
            self.backend, self.job, job_dir, self._credential_lifetime(desc), policy
        )
        start = time.monotonic()
        try:
            proxy = payload_proxy.obtain()
        except NoStoredProxy as exc:
            if must:
                return self._finish(JobStatus.FAILED, f"{delegation.FAILED_MINOR}: {exc}", None)
            log.info("job %s: runs without a payload proxy: %s", self.job.job_id, exc)
            self.notes.append("no payload proxy (owner has none stored)")
            return None
        except PilotError as exc:
            log.error("job %s: payload proxy: %s", self.job.job_id, exc)
            return self._finish(JobStatus.FAILED, f"{delegation.FAILED_MINOR}: {exc}", None)
        self.timing["proxy"] = time.monotonic() - start
        payload_proxy.start_renewal(proxy)
        self.payload_proxy = payload_proxy
        return None

    def _stage_and_run(self, desc: jdl.JobDescription, job_dir: Path) -> JobOutcome:
        self.status(JobStatus.RUNNING, Minor.DOWNLOADING_IS)
        if self.beat is not None:
            self.beat.start()
        start = time.monotonic()
        try:
            sandbox.stage_in(
                self.backend,
                self.job,
                desc,
                job_dir,
                self.settings.unpack_limits,
                self.settings.fetch_url,
            )
        except SandboxError as exc:
            return self._finish(JobStatus.FAILED, str(exc), None)
        self.timing["stage_in"] = time.monotonic() - start
        if self.cancel.is_set():
            return self._finish(JobStatus.KILLED, self.cancel.reason, None)
        result = self._execute(desc, job_dir)
        self._remove_credentials()  # never packed into the output sandbox
        jobwrapper = bool(getattr(self.backend, "jobwrapper_rules", False))
        if jobwrapper and result.ending is None and result.signal is None:
            ok = result.exit_code == 0 and not result.unsaved
            self._best_effort(JobStatus.COMPLETING, Minor.APP_SUCCESS if ok else Minor.APP_ERRORS)
        self.status(JobStatus.COMPLETING, Minor.UPLOADING_OS)
        start = time.monotonic()
        notes = [*self.notes, *application_notes(result, self.settings.max_stdout_bytes)]
        succeeded = (
            result.ending is None
            and result.signal is None
            and result.exit_code == 0
            and not result.unsaved
        )
        data_failure = None
        upload_failure = None

        def uploading_data() -> None:
            self._best_effort(JobStatus.COMPLETING, Minor.UPLOADING_OD)

        try:
            staged = sandbox.stage_out(
                self.backend,
                self.job,
                desc,
                job_dir,
                self.settings.max_output_bytes,
                with_data=succeeded,
                before_data=uploading_data,
            )
            notes.append(staged.note())
            if jobwrapper and staged.uploaded:
                self._best_effort(JobStatus.COMPLETING, Minor.OS_UPLOADED)
            if jobwrapper and staged.output_data:
                self._best_effort(JobStatus.COMPLETING, Minor.OD_UPLOADED)
        except sandbox.OutputDataError as exc:
            log.error("job %s: %s", self.job.job_id, exc)
            data_failure = str(exc)
        except PilotError as exc:  # after the outbox's retries: the output is not stored
            upload_failure = f"Output sandbox upload failed: {exc}"
            self.keep_job_dir = True
            log.error(
                "job %s: output sandbox upload failed: %s; job directory kept: %s",
                self.job.job_id,
                exc,
                job_dir,
            )
            notes.append(f"job directory kept: {job_dir}")
            if succeeded and desc.output_data:  # the data still goes where it belongs
                try:
                    uploading_data()
                    sandbox.store_output_data(self.backend, self.job, desc, job_dir)
                except sandbox.OutputDataError as data_exc:
                    log.error("job %s: %s", self.job.job_id, data_exc)
                    data_failure = str(data_exc)
        self.timing["stage_out"] = time.monotonic() - start
        note = "; ".join(n for n in notes if n)
        if data_failure is not None:  # the payload worked, its data is not where it belongs
            return self._finish(JobStatus.FAILED, data_failure, 0, note)
        return self.conclude(result, note, upload_failure)

    def _best_effort(self, status: JobStatus, minor: str) -> None:
        """An intermediate status: not worth failing (or losing data) for."""
        try:
            self.status(status, minor)
        except PilotError as exc:
            log.warning("job %s: status %s not sent: %s", self.job.job_id, minor, exc)

    def spec(self, desc: jdl.JobDescription, job_dir: Path) -> execute.ExecutionSpec:
        """How this job's payload runs: argv (in its sandbox), environment, limits."""
        settings = self.settings
        argv = isolation.wrap(
            settings.isolation,
            payload_argv(desc, job_dir),
            job_dir,
            settings.work_dir,
            settings.hidden_paths,
        )
        slot_left = None
        if self.slot_deadline is not None:
            slot_left = self.slot_deadline - time.monotonic()
        supervision = execute.Supervision(
            sample_interval=settings.sample_interval,
            grace=settings.grace,
            max_stdout_bytes=settings.max_stdout_bytes,
            limits=job_limits(desc, settings, self.cores, self.memory_mb, slot_left),
            cgroup=settings.cgroup,
        )
        return execute.ExecutionSpec(
            argv=argv,
            cwd=job_dir,
            env=payload_env(
                desc,
                self.job.job_id,
                settings,
                job_dir,
                self.cores,
                self.payload_proxy.path if self.payload_proxy is not None else None,
                self.payload_token.path if self.payload_token is not None else None,
            ),
            stdout=stream_path(job_dir, desc.std_output, ".stdout"),
            stderr=stream_path(job_dir, desc.std_error or desc.std_output, ".stderr"),
            cores=self.cores,
            supervision=supervision,
        )

    def _execute(self, desc: jdl.JobDescription, job_dir: Path) -> execute.ExecutionResult:
        spec = self.spec(desc, job_dir)
        self.status(JobStatus.RUNNING, Minor.APPLICATION, "Running")
        log.info("job %s: running %s", self.job.job_id, " ".join(payload_argv(desc, job_dir)))
        self.launched.set()  # a few ms early: nothing of the pilot's is left to do first
        try:
            result = execute.run(spec, self.cancel, self.monitor)
        except execute.LaunchError as exc:
            result = execute.ExecutionResult(127, None, 0.0, 0.0)
            log.error("job %s: %s", self.job.job_id, exc)
        self.timing["payload"] = result.wall_time
        self.timing["payload_cpu"] = result.cpu_time
        log.info(
            "job %s: payload ended (exit %s, signal %s, %.2f s, %.2f s CPU%s)",
            self.job.job_id,
            result.exit_code,
            result.signal,
            result.wall_time,
            result.cpu_time,
            f", {result.ending.minor}" if result.ending else "",
        )
        return result

    def conclude(
        self, result: execute.ExecutionResult, note: str, upload_failure: str | None = None
    ) -> JobOutcome:
        status, minor, code = self._judge(result)
        if upload_failure is not None and status is JobStatus.DONE:
            # Done means the output is stored: a job whose output could not be is Failed.
            status, minor = JobStatus.FAILED, upload_failure
        return self._finish(status, minor, code, note)

    def _judge(self, result: execute.ExecutionResult) -> tuple[JobStatus, str, int | None]:
        """The job's final status, minor status and exit code from its payload's end."""
        if result.ending is not None:
            status = (
                JobStatus.KILLED
                if result.ending.kind is execute.EndKind.CANCELLED
                else JobStatus.FAILED
            )
            return status, result.ending.minor, result.exit_code
        if result.signal is not None:
            # A batch system's kill (scancel) signals the whole process tree: the payload
            # may die before the pilot's own handler has cancelled the job. Give the
            # pilot a moment to say why before calling it a failure.
            if result.signal in STOP_SIGNALS and self.cancel.wait(2.0):
                return JobStatus.KILLED, self.cancel.reason, None
            return JobStatus.FAILED, f"Payload killed by signal {result.signal}", None
        if result.exit_code != 0:
            minor = f"Payload failed with exit code {result.exit_code}"
            if getattr(self.backend, "jobwrapper_rules", False):
                minor = Minor.APP_ERRORS  # the exit code is in the application status
            return JobStatus.FAILED, minor, result.exit_code
        if result.unsaved:  # the payload worked but what it printed is lost
            minor = "Payload output not saved: " + "; ".join(result.unsaved)
            return JobStatus.FAILED, minor, 0
        return JobStatus.DONE, Minor.EXECUTION_COMPLETE, 0

    def _finish(
        self, status: JobStatus, minor: str, code: int | None, note: str = ""
    ) -> JobOutcome:
        app = f"exit code {code}" if code is not None else status.value
        if note:
            app = f"{app}; {note}"
        log.info("job %s: %s (%s)", self.job.job_id, status, minor)
        if self.beat is not None:
            self.beat.stop()
        try:
            self.status(status, minor, app, Timing=dict(self.timing))
        except PilotError as exc:
            log.error("job %s: could not report final status %s: %s", self.job.job_id, status, exc)
        return JobOutcome(self.job.job_id, status, minor, code, dict(self.timing))
