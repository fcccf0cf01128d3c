"""The watchdog: what a running payload consumes, which limit it broke, and heartbeats.

- :func:`scan` reads ``/proc/*/stat`` once per sample (one read per process gives its
  parent, group, session, CPU, RSS and Vsize), far cheaper than one psutil object each.
- :class:`ProcessTree` is one job's processes: the descendants of the payload's main
  process, plus processes that re-parented to the pilot (it is the child subreaper, see
  :func:`pilot.job.execute.become_subreaper`) and came from this job: seen before in the tree,
  still in the payload's session, or carrying the job's mark in their environment
  (``PILOT_JOB_MARK``, read from ``/proc/PID/environ``). It also reaps the zombies of
  those orphans, and only those: the pilot's other children (helper commands run with
  :mod:`subprocess`, other payloads) keep their exit status for their own ``wait``.
- :class:`Sampler` turns a tree into :class:`Usage` (CPU, memory, processes, disk);
  :class:`LimitChecker` compares it with the job's :class:`Limits` and names the broken
  one as a DIRAC-style minor status.
- :class:`Monitor` holds the latest usage for :class:`Heartbeat`, a thread per job that
  sends it to the server and applies the commands in the answer (``Kill``).

Units on the wire: seconds for times, MB (2**20 bytes) for memory and disk.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.backends.base import Backend, MatchedJob
from pilot.errors import AuthError, PilotError

log = logging.getLogger(__name__)

MARK_VAR = "PILOT_JOB_MARK"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1 << 20
TAIL_LINES = 20
DISK_WALK_BUDGET = 0.02  # at most this fraction of wall time spent measuring the job dir

STALE_ZOMBIE_S = 10.0  # an unclaimed zombie child this old is an orphan: reap it

_reap_lock = threading.Lock()
_mains: set[int] = set()  # payload main processes: waited for by their supervisor
_zombie_since: dict[tuple[int, int], float] = {}


# -- the process table ------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """One process as ``/proc/PID/stat`` shows it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cpu: float  # own user + system seconds
    cpu_children: float  # of its children it has waited for
    start: int  # clock ticks after boot: (pid, start) names one process for ever
    vsize: int  # bytes
    rss: int  # bytes

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.start)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def parse_stat(pid: int, data: bytes) -> ProcStat | None:
    """Parse the text of ``/proc/PID/stat`` (the command name may hold spaces and parens)."""
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            sid=int(fields[3]),
            state=fields[0].decode("ascii", "replace"),
            cpu=(int(fields[11]) + int(fields[12])) / CLK_TCK,
            cpu_children=(int(fields[13]) + int(fields[14])) / CLK_TCK,
            start=int(fields[19]),
            vsize=int(fields[20]),
            rss=int(fields[21]) * PAGE_SIZE,
        )
    except (IndexError, ValueError):
        return None


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return parse_stat(pid, fh.read())
    except OSError:
        return None  # gone, or not ours to read


def scan() -> dict[int, ProcStat]:
    """Every process on the node, by pid."""
    table: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat is not None:
                table[stat.pid] = stat
    return table


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from ``/proc/PID/task/*/children`` (every thread's)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError):
            continue
    return found


def _children_files() -> bool:
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def walk(roots: Iterable[int]) -> dict[int, ProcStat]:
    """The processes under ``roots`` (included): cheap, but may miss a process forked or
    ended during the walk (the kernel says so), so kill decisions use :func:`scan`."""
    if not _children_files():
        return scan()
    table: dict[int, ProcStat] = {}
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in table:
            stat = read_stat(pid)
            if stat is not None:
                table[pid] = stat
                stack.extend(children(pid))
    return table


def pilot_children() -> dict[int, ProcStat]:
    """The pilot's direct children only (enough to find its zombies)."""
    if not _children_files():
        return scan()
    stats = (read_stat(pid) for pid in children(os.getpid()))
    return {s.pid: s for s in stats if s is not None}


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether ``NAME=value`` (``entry``) is in the process's initial environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return entry in fh.read().split(b"\0")
    except OSError:
        return False


# -- one job's processes ----------------------------------------------------------------


class ProcessTree:
    """The processes of one payload, including daemons that re-parented to the pilot."""

    def __init__(self, main_pid: int, mark: str) -> None:
        self.main = main_pid
        self.sid = main_pid  # the payload starts a new session: its id is the main pid
        self.mark_entry = f"{MARK_VAR}={mark}".encode()
        self.pilot = os.getpid()
        first = read_stat(main_pid)
        self.main_key = first.key if first is not None else None
        self.seen: set[tuple[int, int]] = set()
        self.foreign: set[tuple[int, int]] = set()
        self.session_alive = True
        self.reaped_cpu = 0.0  # CPU of the processes the pilot itself waited for
        self.cpu_high = 0.0

    def members(self, table: Mapping[int, ProcStat]) -> list[ProcStat]:
        """This job's processes in ``table`` (zombies included), remembering each one."""
        children: dict[int, list[ProcStat]] = collections.defaultdict(list)
        for stat in table.values():
            children[stat.ppid].append(stat)
        roots = [s for s in children[self.pilot] if self._owns(s)]
        # Seen before but adopted elsewhere (no subreaper, or another one in between):
        roots += [table[p] for p, start in self.seen if p in table and table[p].start == start]
        found: dict[int, ProcStat] = {}
        while roots:
            stat = roots.pop()
            if stat.pid not in found:
                found[stat.pid] = stat
                roots.extend(children.get(stat.pid, ()))
        # A process absent from ``table`` but still in /proc was missed by a walk: keep it.
        missed = {k for k in self.seen if k[0] not in table and os.path.exists(f"/proc/{k[0]}")}
        self.seen = {s.key for s in found.values()} | missed
        self.foreign &= {s.key for s in children[self.pilot]}
        self.session_alive = any(s.sid == self.sid for s in found.values())
        return list(found.values())

    def _owns(self, stat: ProcStat) -> bool:
        """Whether a child of the pilot belongs to this job."""
        if stat.pid == self.main:
            return stat.key == self.main_key
        if stat.key in self.seen:
            return True
        if stat.sid == self.sid and self.session_alive:
            return True  # the kernel does not reuse a pid still naming a live session
        if stat.key in self.foreign or stat.zombie:
            return False
        if environ_has(stat.pid, self.mark_entry):
            return True
        self.foreign.add(stat.key)
        return False

    def live(self, table: Mapping[int, ProcStat]) -> list[ProcStat]:
        return [s for s in self.members(table) if not s.zombie]

    def cpu(self, members: Iterable[ProcStat]) -> float:
        """CPU seconds of the whole job so far (never decreases)."""
        total = self.reaped_cpu + sum(s.cpu + s.cpu_children for s in members)
        self.cpu_high = max(self.cpu_high, total)
        return self.cpu_high

    def add_reaped(self, rusage: Any) -> None:
        self.reaped_cpu += rusage.ru_utime + rusage.ru_stime

    def reap(self, members: Iterable[ProcStat]) -> int:
        """Wait for this job's zombies that re-parented to the pilot (never the main one)."""
        reaped = 0
        with _reap_lock:
            for stat in members:
                if stat.zombie and stat.ppid == self.pilot and stat.pid != self.main:
                    rusage = _wait_zombie(stat.pid)
                    if rusage is not None:
                        self.add_reaped(rusage)
                        reaped += 1
        return reaped


def _wait_zombie(pid: int) -> Any:
    try:
        done, _status, rusage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return rusage if done == pid else None


def register_main(pid: int) -> None:
    """A payload's main process: its supervisor waits for it, :func:`reap_strays` never."""
    with _reap_lock:
        _mains.add(pid)


def unregister_main(pid: int) -> None:
    with _reap_lock:
        _mains.discard(pid)


def reap_strays(table: Mapping[int, ProcStat], stale_after: float | None = None) -> int:
    """Reap zombie children of the pilot that no ``wait`` of ours will ever collect.

    Orphans in a session that is neither their own (every child the pilot starts with
    :mod:`subprocess` leads its own session) nor the pilot's (a plain ``fork`` of the
    pilot, such as the CPU benchmark's, stays in it) go at once. A zombie leading its
    own session may be a helper command whose ``wait`` is about to come, or a payload's
    ``setsid`` intermediate that died unseen: it goes once it has stayed a zombie for
    ``stale_after`` seconds, far longer than any helper's ``wait`` takes.
    """
    stale_after = STALE_ZOMBIE_S if stale_after is None else stale_after
    pilot, pilot_sid = os.getpid(), os.getsid(0)
    now = time.monotonic()
    reaped = 0
    with _reap_lock:
        zombies = [s for s in table.values() if s.ppid == pilot and s.zombie]
        for key in set(_zombie_since) - {s.key for s in zombies}:
            del _zombie_since[key]
        for stat in zombies:
            since = _zombie_since.setdefault(stat.key, now)
            orphan = stat.sid not in (stat.pid, pilot_sid)
            stale = stat.sid == stat.pid and now - since >= stale_after
            if (orphan or stale) and stat.pid not in _mains and _wait_zombie(stat.pid):
                reaped += 1
    if reaped:
        log.debug("reaped %d orphaned zombie(s)", reaped)
    return reaped


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
        table = self._table()
        members = self.tree.members(table)
        if self.tree.reap(members):
            members = self.tree.members(self._table())
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

    def _table(self) -> dict[int, ProcStat]:
        """The pilot's descendants and the job's processes adopted elsewhere."""
        return walk([self.tree.pilot, *(pid for pid, _ in self.tree.seen)])


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
            return f"Job exceeded memory limit ({self.limits.memory_source or f'{limit:.0f} MB'})"
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


# -- heartbeats -------------------------------------------------------------------------


class Monitor:
    """The latest vital signs of one job, shared by its supervisor and its heartbeat."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._lock = threading.Lock()
        self._usage: Usage | None = None
        self._tail: Callable[[], str] = lambda: ""

    def publish(self, usage: Usage) -> None:
        with self._lock:
            self._usage = usage

    def follow_output(self, tail: Callable[[], str]) -> None:
        with self._lock:
            self._tail = tail

    def metrics(self) -> dict[str, Any]:
        with self._lock:
            usage, tail = self._usage, self._tail
        out: dict[str, Any] = {
            "LoadAverage": round(os.getloadavg()[0], 2),
            "AvailableDiskSpace": round(free_mb(self.work_dir) or 0.0, 1),
        }
        if usage is not None:
            out.update(
                CPUConsumed=round(usage.cpu, 2),
                WallClockTime=round(usage.wall, 2),
                MemoryUsed=round(usage.rss_mb, 1),
                Vsize=round(usage.vsize_mb, 1),
            )
        text = tail()
        if text:
            out["StandardOutput"] = text
        return out


class Heartbeat:
    """Sends a job's vital signs every ``interval`` seconds and acts on the answer."""

    def __init__(
        self,
        backend: Backend,
        job: MatchedJob,
        monitor: Monitor,
        interval: float,
        cancel: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self.job = job
        self.monitor = monitor
        self.interval = interval
        self.cancel = cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job.job_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating; does not wait for a call in flight (it may be retrying)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> tuple[str, ...]:
        try:
            commands = self.backend.heartbeat(self.job, self.monitor.metrics())
        except AuthError as exc:
            log.warning(
                "job %s: heartbeat refused (%s): stopping the payload", self.job.job_id, exc
            )
            self.cancel("Job no longer assigned to this pilot")
            return ()
        except PilotError as exc:
            log.warning("job %s: heartbeat failed: %s", self.job.job_id, exc)
            return ()
        if "Kill" in commands:
            log.info("job %s: kill requested by the server", self.job.job_id)
            self.cancel("Killed by user")
        return commands


def tail_lines(data: bytes, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``data`` as text."""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
