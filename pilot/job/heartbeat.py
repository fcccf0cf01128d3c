"""Heartbeats: a job's latest vital signs sent to the backend, and its commands obeyed.

:class:`Monitor` holds the latest :class:`~pilot.job.limits.Usage` and output tail of one
job; :class:`Heartbeat`, a thread per job, sends them to the server and applies the
commands in the answer (``Kill``). The only part of the watchdog that needs a backend.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pilot.backends.base import Backend, MatchedJob, Minor
from pilot.errors import AuthError, PilotError
from pilot.job.limits import Usage, free_mb

log = logging.getLogger(__name__)

TAIL_LINES = 20


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
            self.cancel(Minor.NO_LONGER_ASSIGNED)
            return ()
        except PilotError as exc:
            log.warning("job %s: heartbeat failed: %s", self.job.job_id, exc)
            return ()
        if "Kill" in commands:
            log.info("job %s: kill requested by the server", self.job.job_id)
            self.cancel(Minor.KILLED_BY_USER)
        return commands


def tail_lines(data: bytes, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``data`` as text."""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
