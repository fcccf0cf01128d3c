"""Run one payload under the watchdog, and leave nothing of it running afterwards.

The payload gets an argv list (never a shell), stdin from /dev/null, its own session and
process group, and a random mark in its environment (``PILOT_JOB_MARK``) by which its
daemons are recognised after they re-parent to the pilot. Its stdout and stderr are
pipes that a pilot thread copies into the job's files up to a cap, so a flooding
payload can neither fill the disk nor block. A supervisor loop (in the job's thread)
waits for the main process (pidfd), samples the tree every ``sample_interval`` seconds
and ends the job on a cancel (signal, kill command) or a broken limit: SIGTERM to every
process of the job, SIGKILL after ``grace``. When the main process ends by itself, its
leftover processes get the same treatment.

The pilot must call :func:`become_subreaper` once (the agent does) so that processes
double-forked by payloads re-parent to it and not to init.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO

from pilot.job import guardian, heartbeat, isolation, proctable
from pilot.job import limits as job_limits

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
TICK_S = 0.25  # how long a cancel may wait to be noticed
KILL_ROUNDS = 50
TRUNCATION_NOTE = b"\n[pilot-agent: output truncated here, limit reached]\n"

_subreaper_lock = threading.Lock()
_subreaper: bool | None = None


def become_subreaper() -> bool:
    """Make the pilot the child subreaper of its descendants (once); False if impossible."""
    global _subreaper
    with _subreaper_lock:
        if _subreaper is None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                _subreaper = False
            if _subreaper:
                log.debug("pilot is now the child subreaper of its payloads")
            else:
                log.warning("cannot become child subreaper: daemons of payloads may escape")
        return _subreaper


class Cancel:
    """'Stop this job', settable from any thread; the first reason given wins."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""

    def set(self, reason: str) -> None:
        with self._lock:
            if not self._event.is_set():
                self._reason = reason
                self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


class EndKind(StrEnum):
    LIMIT = "limit"  # the watchdog ended it: a limit was broken
    CANCELLED = "cancelled"  # someone ended it: a signal to the pilot, a kill command


@dataclass(frozen=True)
class Ending:
    """Why the pilot ended a payload (the minor status to report)."""

    kind: EndKind
    minor: str


@dataclass(frozen=True)
class Supervision:
    """How a payload is watched; the same for every job of a pilot except ``limits``."""

    sample_interval: float = 5.0
    grace: float = 30.0  # seconds between SIGTERM and SIGKILL
    max_stdout_bytes: int = 50 << 20  # cap of each of stdout/stderr; <= 0: no cap
    limits: job_limits.Limits = field(default_factory=job_limits.Limits)
    cgroup: isolation.CgroupParent | None = None


@dataclass(frozen=True)
class ExecutionSpec:
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    stdout: Path
    stderr: Path  # the same path as stdout: one merged stream
    cores: int = 1
    supervision: Supervision = field(default_factory=Supervision)


@dataclass(frozen=True)
class ExecutionResult:
    exit_code: int | None  # None when it was killed by a signal
    signal: int | None
    wall_time: float
    cpu_time: float
    ending: Ending | None = None  # why the pilot ended it; None if it ended by itself
    leftovers: int = 0  # processes still running after the main one ended (killed)
    truncated: tuple[str, ...] = ()  # streams cut at the cap
    unsaved: tuple[str, ...] = ()  # streams that could not be written ("stdout: why")
    peak_rss_mb: float = 0.0
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.ending is None


class LaunchError(Exception):
    """The payload could not be started at all (missing executable, permission)."""


# -- output -----------------------------------------------------------------------------


class _Stream:
    def __init__(self, name: str, path: Path, max_stdout_bytes: int) -> None:
        self.name = name
        self.max_stdout_bytes = max_stdout_bytes
        self.read_fd, self.write_fd = os.pipe()
        self.file: IO[bytes] = path.open("ab", buffering=0)
        self.written = 0
        self.truncated = False
        self.error: str | None = None  # why the file could not be written (full disk)
        self.tail = bytearray()

    def feed(self, data: bytes) -> None:
        limit = self.max_stdout_bytes
        room = len(data) if limit <= 0 else max(0, limit - self.written)
        if room:
            self._write(data[:room])
            self.written += min(room, len(data))
        if len(data) > room and not self.truncated:
            self.truncated = True
            self._write(TRUNCATION_NOTE)
        self.tail += data
        del self.tail[: -heartbeat.TAIL_LINES * 256]

    def _write(self, data: bytes) -> None:
        """Write to the file; after a failure only remember why and keep draining the pipe,
        so that the payload never blocks on a full pipe."""
        if self.error is not None:
            return
        try:
            self.file.write(data)
        except OSError as exc:
            self.error = f"{self.name}: {exc.strerror or exc}"
            log.error("payload %s not saved: %s", self.name, exc)


class OutputPump:
    """Copies the payload's stdout/stderr pipes into files, up to a cap, in one thread."""

    def __init__(self, stdout: Path, stderr: Path, max_stdout_bytes: int) -> None:
        """``max_stdout_bytes`` caps each stream (<= 0: no cap), as in Supervision."""
        self.streams = [_Stream("stdout", stdout, max_stdout_bytes)]
        if stderr != stdout:
            self.streams.append(_Stream("stderr", stderr, max_stdout_bytes))
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="output-pump", daemon=True)

    @property
    def stdout_fd(self) -> int:
        return self.streams[0].write_fd

    @property
    def stderr_fd(self) -> int:
        return self.streams[-1].write_fd

    def start(self) -> None:
        """Close our copies of the write ends (the payload has them) and start copying."""
        for stream in self.streams:
            stream.write_fd = _close(stream.write_fd)
        self._thread.start()

    def truncated(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams if s.truncated)

    def unsaved(self) -> tuple[str, ...]:
        return tuple(s.error for s in self.streams if s.error is not None)

    def tail(self) -> str:
        with self._lock:
            data = bytes(self.streams[0].tail)
        return heartbeat.tail_lines(data)

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for each in self.streams:
                sel.register(each.read_fd, selectors.EVENT_READ, each)
            sel.register(self._wake_r, selectors.EVENT_READ, None)
            open_streams = len(self.streams)
            while open_streams:
                for key, _ in sel.select():
                    if key.data is None:
                        return  # finish(): a process we could not kill still holds a pipe
                    stream = key.data
                    data = os.read(stream.read_fd, 1 << 16)
                    if not data:
                        sel.unregister(stream.read_fd)
                        open_streams -= 1
                        continue
                    with self._lock:
                        stream.feed(data)

    def finish(self, timeout: float) -> None:
        """Wait for the end of the output (all writers gone), then close everything."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("payload output still open after the job ended: closing it")
                os.write(self._wake_w, b"x")
                self._thread.join(1.0)
        self.close()

    def close(self) -> None:
        """Close every descriptor once (a second close could hit a reused number)."""
        if self._thread.is_alive():
            return  # finish() could not stop it; the daemon thread keeps its pipes
        for stream in self.streams:
            stream.read_fd = _close(stream.read_fd)
            stream.write_fd = _close(stream.write_fd)
            stream.file.close()
        self._wake_r = _close(self._wake_r)
        self._wake_w = _close(self._wake_w)


def _close(fd: int) -> int:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    return -1


# -- running ----------------------------------------------------------------------------


def run(
    spec: ExecutionSpec,
    cancel: Cancel | None = None,
    monitor: heartbeat.Monitor | None = None,
) -> ExecutionResult:
    """Run the payload to its end, or until ``cancel`` is set or a limit is broken."""
    cancel = Cancel() if cancel is None else cancel
    mark = os.urandom(12).hex()
    sup = spec.supervision
    try:
        pump = OutputPump(spec.stdout, spec.stderr, sup.max_stdout_bytes)
    except OSError as exc:
        raise LaunchError(f"cannot open the payload's output: {exc}") from exc
    cgroup = isolation.JobCgroup.create(sup.cgroup, f"job-{mark[:8]}", sup.limits.memory_mb)
    try:
        proc = _launch(spec, mark, pump)
    except BaseException:
        pump.close()
        if cgroup is not None:
            cgroup.remove()
        raise
    proctable.register_main(proc.pid)
    guardian.job_started(mark, proc.pid)  # its session: the payload leads a new one
    if cgroup is not None:
        cgroup.add(proc.pid)
    pump.start()
    if monitor is not None:
        monitor.follow_output(pump.tail)
    supervisor = _Supervisor(spec, proc, mark, pump, cancel, monitor, cgroup)
    try:
        return supervisor.run()
    finally:
        supervisor.close()
        proctable.unregister_main(proc.pid)
        guardian.job_ended(mark)


def _launch(spec: ExecutionSpec, mark: str, pump: OutputPump) -> subprocess.Popen[bytes]:
    env = dict(spec.env)
    env[proctable.MARK_VAR] = mark
    try:
        return subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=pump.stdout_fd,
            stderr=pump.stderr_fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise LaunchError(f"cannot run {spec.argv[0]}: {exc.strerror}") from exc


class _Supervisor:
    """Watches one running payload from the job's thread."""

    def __init__(
        self,
        spec: ExecutionSpec,
        proc: subprocess.Popen[bytes],
        mark: str,
        pump: OutputPump,
        cancel: Cancel,
        monitor: heartbeat.Monitor | None,
        cgroup: isolation.JobCgroup | None,
    ) -> None:
        self.spec = spec
        self.sup = spec.supervision
        self.proc = proc
        self.pump = pump
        self.cancel = cancel
        self.monitor = monitor
        self.cgroup = cgroup
        self.start = time.monotonic()
        self.mark = mark
        self.tree = proctable.ProcessTree(proc.pid, mark)
        self.sampler = job_limits.Sampler(self.tree, spec.cwd, self.start)
        self.checker = job_limits.LimitChecker(self.sup.limits)
        self.status: int | None = None  # wait status of the main process
        self.peak_rss = 0.0
        self.pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self.pidfd = os.pidfd_open(proc.pid)

    def run(self) -> ExecutionResult:
        ending = self._watch()
        if ending is not None:
            log.info("payload %d: %s: stopping it", self.proc.pid, ending.minor)
            self._terminate()
        scanned = self._final_look()  # serves the count and the result
        leftovers = len(self.tree.live(scanned))
        table: Mapping[int, proctable.ProcStat] | None = scanned
        if leftovers:
            log.info("payload %d left %d process(es): stopping them", self.proc.pid, leftovers)
            self._terminate()
            table = None  # the processes changed: the result needs a new look
        wall = time.monotonic() - self.start
        self.pump.finish(timeout=2.0)
        if ending is None and self.cgroup is not None and self.cgroup.oom_kills():
            ending = Ending(EndKind.LIMIT, job_limits.memory_exceeded(self.sup.limits))
        if ending is None and self.pump.truncated():
            ending = self._output_ending()  # it ended by itself, but its output is cut
        return self._result(ending, leftovers, wall, table)

    def _final_look(self) -> Mapping[int, proctable.ProcStat]:
        """The processes that can belong to the job once its main process has ended.

        :meth:`ProcessTree.members` only follows the pilot's children and the job's
        processes seen before, so a walk from those (:meth:`ProcessTree.nearby`) holds all
        it can find, without reading the whole process table (thousands of processes on
        a big node, at every job's end). A walk can miss a process forked while it runs,
        but not one that outlives two walks: two that find nothing of the job are enough;
        when one finds something, the full scan decides, as for any kill."""
        for _ in range(2):
            table = self.tree.nearby()
            if self.tree.live(table):
                return proctable.scan()
        return table

    def _output_ending(self) -> Ending:
        what = " and ".join(self.pump.truncated())
        mb = self.sup.max_stdout_bytes / job_limits.MB
        return Ending(EndKind.LIMIT, job_limits.output_exceeded(what, mb))

    def _watch(self) -> Ending | None:
        next_sample = self.start + min(self.sup.sample_interval, 1.0)
        while True:
            if self._main_ended():
                return None
            if self.cancel.is_set():
                return Ending(EndKind.CANCELLED, self.cancel.reason)
            if self.pump.truncated():
                return self._output_ending()
            now = time.monotonic()
            if now >= next_sample:
                reason = self._sample()
                if reason is not None:
                    return Ending(EndKind.LIMIT, reason)
                next_sample = now + self.sup.sample_interval
            self._wait_main(min(max(0.0, next_sample - time.monotonic()), TICK_S))

    def _sample(self) -> str | None:
        usage, _live = self.sampler.sample()
        guardian.job_seen(self.mark, self.tree.seen)
        self.peak_rss = max(self.peak_rss, usage.rss_mb)
        if self.monitor is not None:
            self.monitor.publish(usage)
        return self.checker.check(usage)

    def _wait_main(self, timeout: float) -> None:
        if self.status is not None:
            time.sleep(timeout)
        elif self.pidfd is not None:
            select.select([self.pidfd], [], [], timeout)
        else:  # no pidfd (kernel before 5.3): the main process's end is seen within a tick
            time.sleep(timeout)

    def _main_ended(self) -> bool:
        """Whether the main process has ended; collects its status and CPU once."""
        if self.status is not None:
            return True
        try:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        except ChildProcessError:
            log.error("payload %d was reaped by someone else", self.proc.pid)
            pid, status, rusage = self.proc.pid, 255 << 8, None
        if pid == 0:
            return False
        self.status = status
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if rusage is not None:
            self.tree.add_reaped(rusage)
        return True

    def _terminate(self) -> None:
        """SIGTERM to every process of the job, SIGKILL to what is left after the grace."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.sup.grace
        while time.monotonic() < deadline:
            if self._main_ended() and not self._live(cheap=True) and not self._live():
                return
            self._wait_main(0.1)
        self._kill_all()

    def _live(self, cheap: bool = False) -> list[proctable.ProcStat]:
        """The job's live processes; ``cheap`` walks from the pilot, else reads all /proc."""
        return self.tree.live(self.tree.nearby() if cheap else proctable.scan())

    def _signal_all(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        for stat in self._live():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(stat.pid, sig)

    def _kill_all(self) -> None:
        """Stop, then kill, until no process of the job is left (a forking payload loses)."""
        if self.cgroup is not None:
            self.cgroup.kill()
        for _ in range(KILL_ROUNDS):
            self._main_ended()
            table = proctable.scan()
            live = self.tree.live(table)
            self.tree.reap(self.tree.members(table))
            if not live and self.status is not None:
                return
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for stat in live:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(stat.pid, sig)
            self._wait_main(0.02)
        log.error("payload %d: processes survive SIGKILL (stuck in the kernel?)", self.proc.pid)

    def _result(
        self,
        ending: Ending | None,
        leftovers: int,
        wall: float,
        table: Mapping[int, proctable.ProcStat] | None = None,
    ) -> ExecutionResult:
        code = self.proc.returncode if self.proc.returncode is not None else 255
        if table is None:
            table = proctable.scan()
        members = self.tree.members(table)
        cpu = self.tree.cpu(members)  # before reaping: zombies still count from the table
        self.tree.reap(members)
        proctable.reap_strays(table)
        return ExecutionResult(
            exit_code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            wall_time=wall,
            cpu_time=cpu,
            ending=ending,
            leftovers=leftovers,
            truncated=self.pump.truncated(),
            unsaved=self.pump.unsaved(),
            peak_rss_mb=self.peak_rss,
        )

    def close(self) -> None:
        if self.status is None:  # an exception got us here: do not leave it running
            with contextlib.suppress(Exception):
                self._signal_all(signal.SIGKILL)
                self._kill_all()
        self.pump.close()
        if self.pidfd is not None:
            _close(self.pidfd)
            self.pidfd = None
        if self.cgroup is not None:
            self.cgroup.remove()
