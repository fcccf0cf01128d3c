"""No payload outlives the pilot: a guardian process that ends the jobs of a dead pilot.

``pilot run`` forks the guardian first thing, before any thread exists (a fork of a
single-threaded process is safe, and costs ~1 ms and no exec). The guardian leads its
own session (a ``kill`` of the pilot's process group does not reach it), ignores the
signals a batch system sends before a slot ends, and blocks reading a pipe whose only
writer is the pilot. The pilot writes to it each job's mark (``PILOT_JOB_MARK``) and
session when the payload starts, the processes its watchdog has seen in the job, and
the job's end. When the pilot dies, however it dies (``kill -9`` included), the kernel
closes the pipe and the guardian reads end-of-file; it is also told by a parent-death
signal (``PR_SET_PDEATHSIG``, set with ``prctl`` through ctypes), in case a fork of the
pilot still holds the pipe. It then kills, with SIGKILL and in a few rounds, every
process in a running job's session, carrying its mark, seen by the watchdog, or
descending from any of those, and exits. When the pilot ends normally every job is
over and the guardian exits without killing anything.

What this covers and what not (also in the README): every process of a job that stays
in its session, keeps its mark in its environment or was seen by a watchdog sample,
and all their descendants. A payload that leaves its session *and* empties its
environment in the last sample interval before the pilot's death, from a parent that
then exits, is not found. With bubblewrap, bwrap's ``--die-with-parent`` and its PID
namespace end the payload as well; a cgroup (batch systems kill by cgroup) covers all.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pilot.job import proctable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
# a real-time signal: no batch system sends those (they use TERM, INT, USR1, USR2, XCPU)
PARENT_DEATH_SIGNAL = int(signal.SIGRTMIN) + 3
KILL_ROUNDS = 20
THREADS_WAIT_S = 2.0  # how long start() waits for threads started before it to end
# A thread whose name starts with this touches nothing the guardian uses (no lock, logger
# or module of ours): start() forks beside it instead of waiting for it. The one-file
# binary's early unpacking of cryptography's library (build/rth_lazy_native.py) is one:
# waiting for it cost a pilot with a proxy ~0.1 s before its first payload.
FORK_SAFE = "fork-safe:"
ROUND_PAUSE_S = 0.1
_IGNORED = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGHUP", "SIGPIPE")

_lock = threading.Lock()
_pipe: int | None = None
_sent: dict[str, set[tuple[int, int]]] = {}


class _ParentGone(Exception):
    pass


def start(report: Path | None = None) -> int | None:
    """Fork the guardian (once, before any thread starts but a ``FORK_SAFE`` one); its
    pid, or None. After the pilot's death it appends what it did to ``report``."""
    global _pipe
    if _pipe is not None:
        return None
    deadline = time.monotonic() + THREADS_WAIT_S
    for thread in _unsafe_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in _unsafe_threads()):
        log.warning(
            "no guardian: threads already run (a fork would be unsafe); payloads may"
            " outlive a pilot killed with kill -9"
        )
        return None
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:
        log.warning("guardian not started: %s", exc)
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # the guardian: never returns
        code = 0
        try:
            _guard(read_fd, write_fd, parent, report)
        except BaseException as exc:
            code = 1
            if report is not None:
                with contextlib.suppress(OSError), report.open("a") as out:
                    out.write(f"guardian failed: {exc!r}\n")
        finally:
            os._exit(code)
    os.close(read_fd)
    _pipe = write_fd
    log.info("guardian %d: payloads end with the pilot", pid)
    return pid


def _unsafe_threads() -> list[threading.Thread]:
    """The threads besides this one that a fork must not run beside."""
    here = threading.current_thread()
    return [t for t in threading.enumerate() if t is not here and not t.name.startswith(FORK_SAFE)]


def _send(line: str) -> None:
    global _pipe
    if _pipe is None:
        return
    try:
        os.write(_pipe, line.encode() + b"\n")
    except OSError as exc:  # the guardian is gone: keep running without it
        log.warning("guardian gone (%s): payloads may outlive a killed pilot", exc)
        with contextlib.suppress(OSError):
            os.close(_pipe)
        _pipe = None


def job_started(mark: str, sid: int) -> None:
    with _lock:
        _sent[mark] = set()
        _send(f"+ {mark} {sid}")


def job_seen(mark: str, keys: Iterable[tuple[int, int]]) -> None:
    """Processes the watchdog found in the job (only new ones are sent)."""
    with _lock:
        sent = _sent.get(mark)
        if sent is None:
            return
        for pid, start in set(keys) - sent:
            _send(f"p {mark} {pid} {start}")
            sent.add((pid, start))


def job_ended(mark: str) -> None:
    with _lock:
        if _sent.pop(mark, None) is not None:
            _send(f"- {mark}")


# -- the guardian process --------------------------------------------------------------


def _guard(read_fd: int, write_fd: int, parent: int, report: Path | None) -> None:
    os.close(write_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, read_fd)
    os.closerange(read_fd + 1, 65536)
    os.setsid()
    for name in _IGNORED:
        signal.signal(getattr(signal, name), signal.SIG_IGN)

    listening = True  # the parent's death ends the read loop once, by EOF or by signal

    def gone(signum: int, frame: object) -> None:
        if listening:  # after EOF ended the loop, the signal that follows changes nothing
            raise _ParentGone

    signal.signal(PARENT_DEATH_SIGNAL, gone)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
    jobs: dict[str, int] = {}  # mark -> session
    seen: dict[str, set[tuple[int, int]]] = {}
    buffered = b""
    try:
        if os.getppid() != parent:
            raise _ParentGone  # died before the parent-death signal was set
        while True:
            data = os.read(read_fd, 65536)
            if not data:
                break
            buffered += data
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                apply_line(line.decode(errors="replace").split(), jobs, seen)
        listening = False
    except _ParentGone:
        pass
    listening = False
    signal.signal(PARENT_DEATH_SIGNAL, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # what the pilot wrote just before it died
        os.set_blocking(read_fd, False)
        while data := os.read(read_fd, 65536):
            buffered += data
    for line in buffered.split(b"\n"):
        apply_line(line.decode(errors="replace").split(), jobs, seen)
    if not jobs:
        return
    killed = end_jobs(jobs, seen)
    if report is not None:
        with contextlib.suppress(OSError), report.open("a") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(
                f"{stamp} pilot {parent} gone: {killed} process(es) of {len(jobs)} job(s) killed\n"
            )


def apply_line(
    words: list[str], jobs: dict[str, int], seen: dict[str, set[tuple[int, int]]]
) -> None:
    """Take one line the pilot wrote (split into words) into the guardian's view:
    ``+ MARK SID`` a job started, ``p MARK PID START`` a process seen in it, ``- MARK`` the
    job ended. A malformed line is ignored."""
    try:
        if words[0] == "+":
            jobs[words[1]] = int(words[2])
            seen[words[1]] = set()
        elif words[0] == "p" and words[1] in seen:
            seen[words[1]].add((int(words[2]), int(words[3])))
        elif words[0] == "-":
            jobs.pop(words[1], None)
            seen.pop(words[1], None)
    except (IndexError, ValueError):
        pass


def end_jobs(jobs: dict[str, int], seen: dict[str, set[tuple[int, int]]]) -> int:
    """SIGKILL every process of these jobs, in rounds until none is left; how many."""
    sessions = set(jobs.values())
    keys = set().union(*seen.values()) if seen else set()
    marks = [f"{proctable.MARK_VAR}={m}".encode() for m in jobs]
    me = os.getpid()
    killed: set[tuple[int, int]] = set()
    quiet = 0
    for _ in range(KILL_ROUNDS):
        table = proctable.scan()
        victims = {
            pid
            for pid, stat in table.items()
            if pid != me
            and (
                stat.sid in sessions
                or stat.key in keys
                or stat.key in killed
                or any(proctable.environ_has(pid, m) for m in marks)
            )
        }
        grown = True
        while grown:  # and every descendant of those
            more = {p for p, s in table.items() if s.ppid in victims and p not in victims}
            grown = bool(more)
            victims |= more
        live = [table[p] for p in victims if not table[p].zombie]
        if not live:
            quiet += 1
            if quiet >= 2:
                break
        for stat in live:
            with contextlib.suppress(OSError):
                os.kill(stat.pid, signal.SIGKILL)
            killed.add(stat.key)
        time.sleep(ROUND_PAUSE_S)
    return len(killed)
