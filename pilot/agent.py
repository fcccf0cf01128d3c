"""The pilot's loop: detect the slot, check the node, register, then match and run jobs
while the slot has cores and time, several at once when it has several cores."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot import __version__
from pilot.api import Check, CheckContext, CheckResult, first_pass_options
from pilot.backends import outbox, stub
from pilot.backends.base import Backend, JobStatus, MatchedJob, Minor
from pilot.config import PilotConfig
from pilot.errors import CheckFailed, PilotError, Undelivered
from pilot.grid.resolve import NO_CREDENTIALS, Credentials
from pilot.job import delegation, execute, isolation, jdl, jobrun, proctable
from pilot.node import batch, checking, resources
from pilot.node.slot import Slot

log = logging.getLogger(__name__)

MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 10.0
MIN_TIME_LEFT_S = 60.0  # no new job when the slot has less than this left
STRAY_REAP_INTERVAL_S = 5.0
# the CPU benchmark waits for the first payload to start, at most this long
BENCHMARK_DELAY_MAX_S = 30.0


class Stop:
    """Set (by a signal handler, say) to make the pilot stop; carries the reason.

    Only the first call counts: batch systems send a stop signal more than once (Grid
    Engine signals the job's process group and then every process of the job, so the
    pilot gets each signal twice within milliseconds, and a later different one must not
    change the reason its jobs are reported with)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.wake = threading.Event()  # also set on every change the loop should look at
        self.reason = ""
        self._lock = threading.Lock()

    def set(self, reason: str) -> bool:
        """Stop with ``reason``; False (and nothing changes) if already stopped."""
        # Never block: a second signal can run this handler again inside the first one
        # (both in the main thread), and whoever holds the lock is already stopping.
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self.event.is_set():
                return False
            self.reason = reason
            self.event.set()
        finally:
            self._lock.release()
        self.wake.set()
        return True

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


@dataclass(frozen=True)
class AgentSummary:
    stamp: str
    outcomes: tuple[jobrun.JobOutcome, ...]
    reason: str  # why the loop ended: idle, max-jobs, drained, stopped, no-time


def new_stamp() -> str:
    host = socket.gethostname().split(".")[0] or "node"
    return f"{host}-{os.getpid()}-{os.urandom(3).hex()}"


def check_settings(config: PilotConfig, builtins: Sequence[Check] = ()) -> checking.CheckSettings:
    return checking.CheckSettings(
        builtins=tuple(builtins),
        default_timeout=config.check_timeout,
        disabled=frozenset(config.disable_check),
        required=frozenset(config.require_check),
        checks_dir=config.checks_dir,
        options=config.checks,
        plugin_path=tuple(Path(p) for p in config.plugin_path),
        timeouts={  # [checks.<name>] timeout = seconds; CheckSettings refuses bad values
            name: table["timeout"]
            for name, table in config.checks.items()
            if isinstance(table, dict) and "timeout" in table
        },
    )


def finishing_later(config: PilotConfig, checks: Sequence[Check]) -> tuple[Check, ...]:
    """The enabled checks that may finish after the first match (``first_pass_options``)."""
    disabled = set(config.disable_check)
    return tuple(c for c in checks if first_pass_options(c) is not None and c.name not in disabled)


def inspect_node(
    config: PilotConfig,
    stamp: str,
    creds: Credentials = NO_CREDENTIALS,
    *,
    builtins: Sequence[Check] = (),
    checks: Sequence[Check] | None = None,
    first_pass: Sequence[Check] = (),
) -> tuple[batch.BatchInfo, checking.CheckReport, resources.ResourceDescription]:
    """Slot detection, environment checks and the resulting resource description.

    ``checks`` defaults to those discovered with ``builtins`` registered; the checks in
    ``first_pass`` run with their ``first_pass_options`` (their quick pass), so that the
    first match does not wait for them (see :class:`Benchmark`)."""
    info = batch.detect()
    left = "no time limit" if info.wall_time_left is None else f"{info.wall_time_left:.0f} s left"
    memory = "memory unknown" if info.memory_mb is None else f"{info.memory_mb} MB"
    where = f"batch job {info.job_id}" if info.job_id else "no batch job"
    log.info("batch system %s (%s): %d cores, %s, %s", info.system, where, info.cores, memory, left)
    settings = check_settings(config, builtins)
    for check in first_pass:
        quick = first_pass_options(check) or {}
        tables = settings.options
        tables = {**tables, check.name: {**tables.get(check.name, {}), **quick}}
        settings = dataclasses.replace(settings, options=tables)
    ctx = CheckContext(config.resolved_work_dir(), info, credentials=creds)
    report = checking.run(ctx, settings, checks)
    for result in report.results:
        log.info("check %-12s %-8s %s", result.name, result.status, result.message)
    desc = resources.describe(config, info, report, stamp)
    return info, report, desc


class Benchmark:
    """The checks that may finish after the first match (the ``cpu`` check's benchmark),
    run in full beside the first jobs instead of before.

    It starts once the first job's payload is launched (its processes would otherwise
    compete with that job's stage-in), or at once when the first match finds nothing.
    Until it reports, the resource description uses the default power (a conservative
    CPUTime); then the agent folds the result in before its next match."""

    def __init__(
        self,
        config: PilotConfig,
        info: batch.BatchInfo,
        report: checking.CheckReport,
        stamp: str,
        wake: threading.Event,
        checks: Sequence[Check],
        creds: Credentials = NO_CREDENTIALS,
    ) -> None:
        self.config, self.info, self.report, self.stamp = config, info, report, stamp
        self.checks, self.creds = tuple(checks), creds
        self.registration: dict[str, Any] = {}  # what the pilot registered with, to update
        self.results: tuple[CheckResult, ...] | None = None
        self._wake = wake
        self._after: threading.Event | None = None
        self._thread = threading.Thread(target=self._run, name="benchmark", daemon=True)

    def start(self, after: threading.Event | None = None) -> None:
        """Begin measuring (once the first match has been asked for: it must not wait),
        when ``after`` is set if given (at most :data:`BENCHMARK_DELAY_MAX_S` later)."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._after = after
            self._thread.start()

    def _run(self) -> None:
        if self._after is not None:
            self._after.wait(BENCHMARK_DELAY_MAX_S)
        ctx = CheckContext(self.config.resolved_work_dir(), self.info, credentials=self.creds)
        settings = check_settings(self.config)
        # Only these checks' results: the run also reports every other check the
        # configuration requires as "required check not found", which would replace
        # their first-pass results (and drop their facts and tags) in take().
        names = {check.name for check in self.checks}
        results = checking.run(ctx, settings, self.checks).results
        self.results = tuple(r for r in results if r.name in names)
        self._wake.set()

    def take(self) -> tuple[checking.CheckReport, resources.ResourceDescription] | None:
        """The full report and description once the benchmark is in (then None again)."""
        results, self.results = self.results, None
        if results is None:
            return None
        full = {r.name: r for r in results}
        merged = tuple(full.get(r.name, r) for r in self.report.results)
        report = checking.CheckReport(merged)
        for result in results:
            log.info("check %-12s %-8s %s", result.name, result.status, result.message)
        return report, resources.describe(self.config, self.info, report, self.stamp)


def choose_isolation(config: PilotConfig) -> isolation.Isolation:
    """``--isolation`` resolved by probing the node (once per pilot)."""
    chosen = isolation.choose(config.isolation, config.resolved_work_dir(), config.apptainer_image)
    log.info("payload isolation: %s (%s)", chosen.runtime, chosen.detail)
    return chosen


def job_settings(
    config: PilotConfig,
    desc: resources.ResourceDescription,
    chosen: isolation.Isolation,
    cgroup: isolation.CgroupParent | None = None,
    creds: Credentials = NO_CREDENTIALS,
) -> jobrun.JobSettings:
    """What every job of this pilot shares: directories, watchdog settings, isolation."""
    return jobrun.JobSettings(
        work_dir=config.resolved_work_dir(),
        pilot_reference=desc.pilot_reference,
        site=config.site,
        grace=config.grace,
        max_output_bytes=config.max_output_mb << 20,
        sample_interval=config.sample_interval,
        heartbeat_interval=config.heartbeat_interval,
        stalled_window=config.stalled_window,
        stalled_cpu_fraction=config.stalled_cpu_fraction,
        max_stdout_bytes=config.max_stdout_mb << 20,
        max_job_disk_mb=config.max_job_disk_mb,
        min_free_disk_mb=config.min_free_disk_mb,
        max_processes=config.max_job_processes,
        benchmark=desc.pilot_benchmark,
        isolation=chosen,
        hidden_paths=creds.hidden_paths,
        base_env=payload_base_env(creds),
        fetch_url=stub.fetch_url,
        cgroup=cgroup,
        delegation=delegation_policy(config),
    )


def payload_base_env(creds: Credentials) -> dict[str, str]:
    """The pilot's environment with the CAs it trusts (``--ca-dir``/``--ca-file`` included),
    so that a payload holding a delegated proxy checks storage servers on the same CAs."""
    env = dict(os.environ)
    if creds.ca_dir is not None:
        env["X509_CERT_DIR"] = str(creds.ca_dir)
    if creds.ca_file is not None:
        env["X509_CERT_FILE"] = str(creds.ca_file)
    return env


def delegation_policy(config: PilotConfig) -> delegation.DelegationPolicy:
    """The payload-proxy settings, checked (UsageError names the setting to fix)."""
    return delegation.DelegationPolicy(
        mode=config.payload_proxy, max_lifetime=config.payload_proxy_max_hours * 3600
    )


@dataclass
class RunningJob:
    runner: jobrun.JobRunner
    thread: threading.Thread


def parse_job(job: MatchedJob) -> jdl.JobDescription | jdl.JDLError:
    """The job's description, parsed once for the whole pilot (or taken as the backend
    parsed it); a bad JDL gives its error, which the runner reports."""
    if job.desc is not None:
        return job.desc
    try:
        return jdl.load(job.jdl)
    except jdl.JDLError as exc:
        return exc


class Agent:
    def __init__(
        self,
        config: PilotConfig,
        backend: Backend,
        desc: resources.ResourceDescription,
        stamp: str,
        stop: Stop,
        settings: jobrun.JobSettings | None = None,
        benchmark: Benchmark | None = None,
        *,
        described_at: float | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        # the slot's time runs from when ``desc`` was measured (default: now)
        self.slot = Slot(desc, started=described_at)
        self.benchmark = benchmark
        self.stamp = stamp
        self.stop = stop
        self.changed = stop.wake
        self.running: dict[str, RunningJob] = {}
        self.outcomes: list[jobrun.JobOutcome] = []
        self.started = 0
        self.job_settings = settings or job_settings(config, desc, isolation.NO_ISOLATION)
        self.next_stray_reap = 0.0
        self.outage_since: float | None = None  # the server has not answered since then
        self.loop_over = threading.Event()

    @property
    def desc(self) -> resources.ResourceDescription:
        return self.slot.desc

    # -- taking jobs --------------------------------------------------------------------

    def _why_not_take(self) -> str | None:
        if self.stop.is_set():
            return "stopped"
        if self.config.drain_file is not None and self.config.drain_file.exists():
            return "drained"
        if self.config.max_jobs is not None and self.started >= self.config.max_jobs:
            return "max-jobs"
        if self.slot.time_left() < MIN_TIME_LEFT_S:
            return "no-time"
        return None

    def _can_take_now(self) -> bool:
        limit = self.config.max_concurrent
        cores, mem = self.slot.free()
        if mem is not None and mem <= 0:
            return False
        return cores >= 1 and (limit is None or len(self.running) < limit)

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> AgentSummary:
        poller = threading.Thread(target=self._poll_commands, name="commands", daemon=True)
        poller.start()
        try:
            return self._loop()
        finally:
            self.loop_over.set()  # the command poll ends with the loop

    def _loop(self) -> AgentSummary:
        backoff = MIN_BACKOFF_S
        idle_since: float | None = None
        reason = "idle"
        while True:
            self._reap()
            why = self._why_not_take()
            if why is not None:
                reason = why
                break
            if self._can_take_now() and self._match_one():
                backoff, idle_since = MIN_BACKOFF_S, None
                continue
            now = time.monotonic()
            if not self.running:
                idle_since = idle_since or now
                if now - idle_since >= self.config.idle_timeout:
                    log.info("no job matched for %.0f s: stopping", now - idle_since)
                    break
            wait = backoff
            if idle_since is not None:
                wait = min(wait, max(0.01, self.config.idle_timeout - (now - idle_since)))
            self.changed.wait(wait)
            self.changed.clear()
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        if self.running:
            log.info("%s: waiting for %d running job(s)", reason, len(self.running))
        self._wait_all()
        return AgentSummary(self.stamp, tuple(self.outcomes), reason)

    def _fold_in_benchmark(self) -> None:
        bench = self.benchmark
        taken = bench.take() if bench is not None else None
        if bench is None or taken is None:
            return
        self.benchmark = None
        report, full = taken
        self.slot.desc = dataclasses.replace(
            self.desc, pilot_benchmark=full.pilot_benchmark, cpu_time=full.cpu_time, tags=full.tags
        )
        self.job_settings = dataclasses.replace(self.job_settings, benchmark=full.pilot_benchmark)
        log.info("CPU power %.1f: CPUTime offered now %d", full.pilot_benchmark, full.cpu_time)
        try:  # let the matcher (and `pilot-stub pilots`) see the complete report
            update = {"checks": report.to_json(), "resources": full.as_dict()}
            self.backend.register(self.stamp, {**bench.registration, **update})
        except PilotError as exc:
            log.warning("could not update the registration: %s", exc)

    def _ask(self, resources: dict[str, Any]) -> MatchedJob | None:
        """One match; an unreachable server (or a 5xx) counts as "no job yet", so an idle
        pilot waits out an outage until its idle timeout instead of exiting."""
        try:
            job = self.backend.match(resources)
        except PilotError as exc:
            if not outbox.retryable(exc):
                raise
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                log.warning("server not answering (%s): no job until it is back", exc)
            return None
        if self.outage_since is not None:
            log.info("server back after %.0f s", time.monotonic() - self.outage_since)
            self.outage_since = None
        return job

    def _poll_commands(self) -> None:
        """Every ``--command-interval`` s, while jobs run, ask for their commands (Kill):
        one light read per pilot, so a kill acts within that interval, not a heartbeat's."""
        interval = self.config.command_interval
        while not self.loop_over.wait(interval) and not self.stop.is_set():
            running = {job_id: r.runner for job_id, r in list(self.running.items())}
            if not running:
                continue
            try:
                commands = self.backend.poll_commands(sorted(running))
            except PilotError as exc:
                log.debug("command poll failed: %s", exc)
                continue
            for job_id, command in commands:
                runner = running.get(job_id)
                if command == "Kill" and runner is not None and not runner.cancel.is_set():
                    log.info("job %s: kill requested by the server", job_id)
                    runner.cancel.set(Minor.KILLED_BY_USER)

    def _match_one(self) -> bool:
        self._fold_in_benchmark()
        cores, mem = self.slot.free()
        start = time.monotonic()
        job = self._ask(self.slot.offer(cores, mem).as_dict())
        launched = None
        if job is not None:
            launched = self._start(job, cores, mem, time.monotonic() - start).launched
        if self.benchmark is not None:
            self.benchmark.start(after=launched)  # now that the first match is done
        return job is not None

    def _start(
        self, job: MatchedJob, free_cores: int, free_mem: int | None, match_s: float
    ) -> jobrun.JobRunner:
        desc = parse_job(job)  # the one parse of this job's JDL
        needs = desc if isinstance(desc, jdl.JobDescription) else None
        cores, mem = self.slot.allocation(needs, free_cores, free_mem)
        self.slot.hold(job.job_id, cores, mem)
        runner = jobrun.JobRunner(
            self.backend,
            job,
            self.job_settings,
            cores,
            desc=desc,
            memory_mb=mem,
            slot_deadline=self.slot.deadline,
            match_seconds=match_s,
        )
        thread = threading.Thread(target=self._run_job, args=(runner,), name=f"job-{job.job_id}")
        self.running[job.job_id] = RunningJob(runner, thread)
        self.started += 1
        log.info("job %s matched: %d core(s), %s MB", job.job_id, cores, mem)
        thread.start()
        return runner

    def _run_job(self, runner: jobrun.JobRunner) -> None:
        try:
            outcome = runner.run()
        except PilotError as exc:
            log.error("job %s: %s", runner.job.job_id, exc)
            outcome = jobrun.JobOutcome(runner.job.job_id, JobStatus.FAILED, str(exc), None, {})
        except Exception:
            log.exception("job %s: unexpected error", runner.job.job_id)
            outcome = jobrun.JobOutcome(
                runner.job.job_id, JobStatus.FAILED, "pilot error", None, {}
            )
        self.outcomes.append(outcome)
        self.changed.set()

    def _reap(self) -> None:
        for job_id, running in list(self.running.items()):
            if not running.thread.is_alive():
                running.thread.join()
                del self.running[job_id]
                self.slot.release(job_id)
        now = time.monotonic()
        if now >= self.next_stray_reap:  # zombies of payload daemons, between jobs too
            self.next_stray_reap = now + STRAY_REAP_INTERVAL_S
            proctable.reap_strays(proctable.pilot_children())

    def _wait_all(self) -> None:
        while self.running:
            if self.stop.is_set():
                self.cancel_all(self.stop.reason or Minor.KILLED_BY_PILOT)
                if isinstance(self.backend, outbox.OutboxBackend):  # reports: grace time only
                    self.backend.outbox.hurry(self.config.grace)
            self.changed.wait(0.5)
            self.changed.clear()
            self._reap()

    def cancel_all(self, reason: str) -> None:
        for running in list(self.running.values()):
            running.runner.cancel.set(reason)


def stop_reason(reason: str, config: PilotConfig, stop: Stop) -> str:
    """Why the loop ended, in words (the summary line of the log)."""
    words = {
        "idle": f"no job matched for {config.idle_timeout:g} s",
        "stopped": stop.reason or "stopped",
        "drained": f"drain file {config.drain_file} appeared",
        "max-jobs": f"--max-jobs {config.max_jobs} reached",
        "no-time": "too little time left in the slot for another job",
    }
    return words.get(reason, reason)


def registration(
    config: PilotConfig,
    info: batch.BatchInfo,
    report: checking.CheckReport,
    desc: resources.ResourceDescription,
    chosen: isolation.Isolation | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": __version__,
        "host": socket.gethostname(),
        "site": config.site,
        "ce": desc.grid_ce,
        "batch": dataclasses.asdict(info),
        "checks": report.to_json(),
        "resources": desc.as_dict(),
    }
    if chosen is not None:
        out["isolation"] = chosen.as_dict()
    return out


def register(
    backend: Backend, stamp: str, info: dict[str, Any], patience: float, stop: Stop
) -> None:
    """Register; a server that does not answer is waited for up to ``patience`` s (the
    idle timeout), as an idle pilot would."""
    start = time.monotonic()
    wait = 1.0
    while True:
        try:
            backend.register(stamp, info)
            return
        except PilotError as exc:
            spent = time.monotonic() - start
            if not outbox.retryable(exc) or spent + wait > patience or stop.is_set():
                raise
            log.warning(
                "could not register (%s): trying again for up to %.0f s", exc, patience - spent
            )
        stop.wait(wait)
        wait = min(wait * 2, MAX_BACKOFF_S)


def run(
    config: PilotConfig,
    backend: Backend,
    stop: Stop,
    log_text: Callable[[], str] | None = None,
    creds: Credentials = NO_CREDENTIALS,
    builtins: Sequence[Check] = (),
    *,
    finish_later: bool = True,
) -> AgentSummary:
    """Inspect the node, register, and run jobs until idle; the pilot's whole life.

    ``builtins`` are the registered built-in checks; checks that may finish after the first
    match do so beside the first job, or (``finish_later=False``) only make their quick
    pass."""
    stamp = new_stamp()
    registered = False
    delegation_policy(config)  # a bad setting stops the pilot before it registers
    execute.become_subreaper()
    reports: outbox.Outbox | None = None
    try:
        checks = checking.discover(check_settings(config, builtins))
        later = finishing_later(config, checks)
        info, report, desc = inspect_node(config, stamp, creds, checks=checks, first_pass=later)
        described_at = time.monotonic()  # registering may take long: the slot's time runs
        benchmark = None
        if later and finish_later:
            benchmark = Benchmark(config, info, report, stamp, stop.wake, later, creds)
        chosen = choose_isolation(config)
        registered_with = registration(config, info, report, desc, chosen)
        slot_end = described_at + desc.wall_clock_time_left
        budget = outbox.budget_for(config.retry_for, slot_end, config.grace, time.monotonic)
        reports = outbox.Outbox(backend, config.resolved_work_dir() / "outbox", budget)
        backend = outbox.OutboxBackend(backend, reports)
        register(backend, stamp, registered_with, config.idle_timeout, stop)
        reports.recover()
        if benchmark is not None:
            benchmark.registration = registered_with
        registered = True
        if not report.ok:
            names = ", ".join(r.name for r in report.failed_required)
            unfit = CheckFailed(f"node not fit: required check(s) failed: {names}; taking no job")
            log.error("%s", unfit)  # here, so that the uploaded pilot log says it too
            unfit.reported = True
            if config.failure_sleep > 0:
                log.info(
                    "holding the slot for %.0f s so it is not handed to another pilot",
                    config.failure_sleep,
                )
                stop.wait(config.failure_sleep)
            raise unfit
        settings = job_settings(config, desc, chosen, isolation.probe_cgroup(), creds)
        summary = Agent(
            config, backend, desc, stamp, stop, settings, benchmark, described_at=described_at
        ).run()
        log.info(
            "pilot %s done: %d job(s); %s",
            stamp,
            len(summary.outcomes),
            stop_reason(summary.reason, config, stop),
        )
        undelivered = reports.drain(stop=stop.event, grace=config.grace)  # a signal: grace only
        reports = None
        if undelivered:
            log.error(
                "%d job report(s) not delivered: left in %s for a later pilot",
                undelivered,
                config.resolved_work_dir() / "outbox",
            )
            raise Undelivered(f"{undelivered} job report(s) not delivered")
        return summary
    finally:
        if reports is not None:  # leaving on an error: what is owed stays journaled
            reports.drain(0.0)
        if registered and log_text is not None:
            try:
                backend.upload_pilot_log(stamp, log_text())
            except PilotError as exc:
                log.warning("could not upload the pilot log: %s", exc)
