"""One job's processes in the node's process table, and reaping what the pilot adopted.

- :func:`scan` reads ``/proc/*/stat`` once per sample (one read per process gives its
  parent, group, session, CPU, RSS and Vsize), far cheaper than one psutil object each.
- :class:`ProcessTree` is one job's processes: the descendants of the payload's main
  process, plus processes that re-parented to the pilot (it is the child subreaper, see
  :func:`pilot.job.execute.become_subreaper`) and came from this job: seen before in the tree,
  still in the payload's session, or carrying the job's mark in their environment
  (``PILOT_JOB_MARK``, read from ``/proc/PID/environ``). It also reaps the zombies of
  those orphans, and only those: the pilot's other children (helper commands run with
  :mod:`subprocess`, other payloads) keep their exit status for their own ``wait``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MARK_VAR = "PILOT_JOB_MARK"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
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

    def nearby(self) -> dict[int, ProcStat]:
        """A cheap table for :meth:`members`: the pilot's descendants and this job's
        processes adopted elsewhere (:func:`walk`; a kill decision wants :func:`scan`)."""
        return walk([self.pilot, *(pid for pid, _ in self.seen)])

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
