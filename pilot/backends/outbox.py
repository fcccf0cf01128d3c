"""The pilot's outbox: every report about a job is journaled, then delivered in order.

Status changes (with the application status and the final status) and output uploads
of a job are appended to a journal in the work directory (``WORK/outbox/job-ID.jsonl``;
one per run of a job: a job matched again while an earlier run's journal is still owed
gets ``job-ID.N.jsonl``, and each run's reports go with that run's token) before they are
sent, and a thread per job sends them in the order they were made.
A transport failure or a 5xx answer is retried with a jittered back-off, for
``retry_for`` seconds from the first failure, by default until the batch slot ends less
the grace time: a server that is away for minutes costs nothing but the wait. Other
answers (4xx) are final. The stub makes repeats harmless (one history row per update,
and a repeat of a final status after its token was revoked succeeds), so a report whose
reply was lost is simply sent again.

A journal line is written before its entry is sent and an acknowledgement line after it
is delivered (or refused for good), so a journal tells what is still owed: a pilot that
must exit with undelivered entries says so (``Undelivered``, exit code 23) and leaves
the journals; a later pilot started on the same work directory sends what they still
hold. A pilot holds its journals locked (``flock``, dropped by the kernel however the
pilot ends), so pilots that share a work directory leave each other's journals alone.
Journals are plain appends without ``fsync``: they survive the pilot's death
(``kill -9``), not the node's. A job's journal is removed once everything in it is
delivered.

:class:`OutboxBackend` puts the outbox in front of any :class:`pilot.backend.Backend`:
status updates return at once (a final one too: the job's cores are free while its
report waits for the server); output uploads wait for their delivery, because whether
the job is ``Done`` depends on them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pilot.backends.base import (
    FINAL_STATUSES,
    Backend,
    Inputs,
    JobStatus,
    MatchedJob,
    StatusUpdate,
)
from pilot.errors import AuthError, PilotError, ServerError, ServerUnreachable

log = logging.getLogger(__name__)

MIN_WAIT_S = 0.5
MAX_WAIT_S = 15.0
WARN_EVERY_S = 60.0  # while an entry is retried, one warning per this many seconds
JOIN_S = 5.0  # at the end, how long calls in flight get to finish (all together)
LINGER_S = 2.0  # how long a job's idle sender waits for its next report


def retryable(exc: PilotError) -> bool:
    """A failure worth another try: no answer, or a server error (5xx)."""
    if isinstance(exc, ServerUnreachable):
        return True
    if isinstance(exc, AuthError):
        return False
    return isinstance(exc, ServerError) and (exc.status is None or exc.status >= 500)


@dataclass(frozen=True)
class RetryBudget:
    """How long an undelivered entry is retried: ``retry_for`` seconds from its first
    failure if given, else until ``slot_end`` (a ``time.monotonic()`` instant)."""

    retry_for: float | None = None
    slot_end: float | None = None
    min_wait: float = MIN_WAIT_S
    max_wait: float = MAX_WAIT_S

    def deadline(self, first_failure: float) -> float:
        if self.retry_for is not None:
            return first_failure + self.retry_for
        return self.slot_end if self.slot_end is not None else first_failure + 3600.0


@dataclass
class _Entry:
    seq: int
    kind: str  # "status" | "output" | "lfn"
    data: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: PilotError | None = None


class _JobQueue:
    def __init__(self, job: MatchedJob, path: Path, next_seq: int = 0, torn: bool = False) -> None:
        self.job = job
        self.path = path
        self.pending: deque[_Entry] = deque()
        self.next_seq = next_seq
        self.worker: threading.Thread | None = None
        self.final_posted = False
        self.owed = False  # an entry was given up on: the journal must stay
        self.file: IO[str] | None = None
        self.torn = torn  # the journal ends in a line cut short: end it before appending
        self.recovered = False  # left by an earlier pilot
        self.key = path.stem  # one queue per journal

    def append(self, record: Mapping[str, Any]) -> None:
        if self.file is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            _locked(fd)  # ours: another pilot's recover() leaves it alone
            self.file = os.fdopen(fd, "a", buffering=1)
        line = json.dumps(record, separators=(",", ":")) + "\n"
        self.file.write("\n" + line if self.torn else line)
        self.torn = False

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None


class Outbox:
    """Journaled, ordered, retried delivery of each job's reports through ``backend``."""

    def __init__(self, backend: Backend, directory: Path, budget: RetryBudget) -> None:
        self.backend = backend
        self.directory = directory
        self.budget = budget
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._queues: dict[str, _JobQueue] = {}
        self._stop = threading.Event()  # cut retries short (the pilot must exit now)
        self._cap: float | None = None  # no retry past this (the pilot was told to stop)
        self.given_up = 0  # entries that could not be delivered in their budget
        self._draining = False  # the pilot is ending: no sender waits for more reports

    # -- posting ------------------------------------------------------------------------

    def post(self, job: MatchedJob, kind: str, data: Mapping[str, Any]) -> _Entry:
        """Journal one entry and queue it for delivery after the job's earlier ones."""
        with self._cond:
            queue = self._queues.get(self._live_key(job))
            if queue is None:
                queue = _JobQueue(job, self._new_journal(job.job_id))
                self._queues[queue.key] = queue
                self._journal(queue, {"job": job.job_id, "token": job.token})
            entry = _Entry(queue.next_seq, kind, dict(data))
            queue.next_seq += 1
            self._journal(queue, {"seq": entry.seq, "kind": kind, **entry.data})
            queue.pending.append(entry)
            if kind == "status" and data.get("status") in FINAL_STATUSES:
                queue.final_posted = True
            sender = self._sender(queue) if queue.worker is None else None
            self._cond.notify_all()  # a sender waiting for the job's next report: here it is
        if sender is not None:
            sender.start()  # outside the lock: the sender's first step takes it
        return entry

    def _live_key(self, job: MatchedJob) -> str:
        """The key of the queue this pilot's current run of ``job`` posts to: a queue
        recovered from an earlier run, or an earlier match with another token (the job was
        rescheduled and matched again), is not it: those reports go with their own token."""
        for key, queue in self._queues.items():
            same_run = (queue.job.job_id, queue.job.token) == (job.job_id, job.token)
            if same_run and not queue.recovered:
                return key
        return ""

    def _new_journal(self, job_id: str) -> Path:
        """A journal name no queue or earlier journal of this work directory uses."""
        path = self.directory / f"job-{job_id}.jsonl"
        attempt = 0
        while path.exists() or any(q.path == path for q in self._queues.values()):
            attempt += 1
            path = self.directory / f"job-{job_id}.{attempt}.jsonl"
        return path

    def _sender(self, queue: _JobQueue) -> threading.Thread:
        """The queue's sender, made (``self._cond`` held) but not started."""
        queue.worker = threading.Thread(
            target=self._deliver_all, args=(queue,), name=f"outbox-{queue.job.job_id}"
        )
        queue.worker.daemon = True
        return queue.worker

    def _journal(self, queue: _JobQueue, record: Mapping[str, Any]) -> None:
        """Append to the job's journal; a journal that cannot be written (full disk) only
        costs the entry its survival of the pilot's death: it is still delivered."""
        try:
            queue.append(record)
        except OSError as exc:
            log.warning("job %s: outbox journal not written: %s", queue.job.job_id, exc)

    def wait(self, entry: _Entry) -> PilotError | None:
        """Wait for ``entry`` to be delivered; the error if it could not be."""
        entry.done.wait()
        return entry.error

    # -- delivering ---------------------------------------------------------------------

    def _deliver_all(self, queue: _JobQueue) -> None:
        while True:
            with self._cond:
                if not queue.pending and not queue.final_posted:
                    # the job's next report usually follows soon: wait for it rather than
                    # make the job's thread start a new sender for each
                    self._cond.wait_for(
                        lambda: bool(queue.pending) or queue.final_posted or self._draining,
                        LINGER_S,
                    )
                if not queue.pending:
                    queue.worker = None
                    if queue.final_posted and not queue.owed:  # over, everything delivered
                        queue.close()
                        with contextlib.suppress(OSError):
                            queue.path.unlink()
                        del self._queues[queue.key]
                    self._cond.notify_all()
                    return
                batch = [queue.pending[0]]
                if batch[0].kind == "status" and hasattr(self.backend, "set_statuses"):
                    for more in list(queue.pending)[1:]:  # merge queued statuses: one call
                        if more.kind != "status":
                            break
                        batch.append(more)
            error = self._attempt(queue.job, batch, queue.recovered)
            # A status given up on is still owed (a later pilot sends it); an upload given
            # up on is its waiting job's failure (reported Failed), not a debt.
            owed = error is not None and retryable(error) and batch[0].kind == "status"
            with self._cond:
                for entry in batch:
                    queue.pending.popleft()
                    entry.error = error
                    if owed:
                        queue.owed = True  # no acknowledgement: a later pilot sends it
                    else:
                        ack: dict[str, Any] = {"ack": entry.seq}
                        if error is not None:
                            ack["refused"] = str(error)
                        self._journal(queue, ack)
                        self._discard_copy(entry)
                    entry.done.set()

    def _discard_copy(self, entry: _Entry) -> None:
        """Remove the outbox's own copy of an upload's file once its entry is settled
        (the copy a dead pilot left for a later one, which has sent it now)."""
        if entry.kind == "output":
            kept = Path(str(entry.data.get("archive", "")))
            if kept.parent == self.directory:
                kept.unlink(missing_ok=True)

    def _send(self, job: MatchedJob, batch: Sequence[_Entry]) -> None:
        first = batch[0]
        if first.kind == "status":
            updates = [_update(e.data) for e in batch]
            if len(updates) > 1:
                self.backend.set_statuses(job, updates)  # type: ignore[attr-defined]
            else:
                self.backend.set_status(job, updates[0])
        elif first.kind == "output":
            self.backend.store_output_sandbox(job, Path(first.data["archive"]))
        elif first.kind == "lfn":
            self.backend.store_lfn(
                job, first.data["lfn"], Path(first.data["path"]), first.data.get("output_se")
            )
        else:
            raise PilotError(f"unknown outbox entry {first.kind!r}")

    def _attempt(
        self, job: MatchedJob, batch: Sequence[_Entry], recovered: bool = False
    ) -> PilotError | None:
        what = _describe(batch)
        first = batch[0]
        wait = self.budget.min_wait
        first_failure: float | None = None
        warned = 0.0
        while True:
            try:
                self._send(job, batch)
            except PilotError as exc:
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                deadline = self.budget.deadline(first_failure)
                if self._cap is not None:
                    deadline = min(deadline, self._cap)
                # An upload's failure goes to its waiting caller, which reports it; a
                # report left by an earlier pilot is refused when its job has moved on
                # (rescheduled after that pilot's death): no error of this pilot.
                level = (
                    logging.ERROR if first.kind == "status" and not recovered else logging.WARNING
                )
                if not retryable(exc):
                    log.log(level, "job %s: %s refused: %s", job.job_id, what, exc)
                    return exc
                if self._stop.is_set() or now + wait > deadline:
                    log.log(
                        level,
                        "job %s: %s not delivered after %.0f s: %s",
                        job.job_id,
                        what,
                        now - first_failure,
                        exc,
                    )
                    if first.kind == "status":
                        with self._cond:
                            self.given_up += len(batch)
                    return exc
                if now - warned >= WARN_EVERY_S:
                    warned = now
                    log.warning(
                        "job %s: %s not delivered (%s); retrying for up to %.0f s more",
                        job.job_id,
                        what,
                        exc,
                        deadline - now,
                    )
                self._stop.wait(wait * random.uniform(0.5, 1.0))
                wait = min(wait * 2, self.budget.max_wait)
                continue
            except Exception as exc:  # an entry that cannot be sent at all
                # (a journal entry a later pilot cannot use: its archive gone, a field
                # garbled): refused for good, so that its waiter and drain() do not hang
                log.error("job %s: %s cannot be sent: %r", job.job_id, what, exc)
                return PilotError(f"{what} cannot be sent: {exc}")
            if first_failure is not None:
                log.info(
                    "job %s: %s delivered after %.0f s of retries",
                    job.job_id,
                    what,
                    time.monotonic() - first_failure,
                )
            return None

    # -- the end ------------------------------------------------------------------------

    def hurry(self, seconds: float) -> None:
        """The pilot must stop (a signal): retry nothing past ``seconds`` from now."""
        with self._cond:
            if self._cap is None:
                self._cap = time.monotonic() + seconds

    def pending(self) -> int:
        with self._cond:
            return sum(len(q.pending) for q in self._queues.values())

    def drain(
        self,
        timeout: float | None = None,
        stop: threading.Event | None = None,
        grace: float = 0.0,
    ) -> int:
        """Wait until every queued entry is delivered or given up (each within its own
        budget), at most ``timeout`` seconds, and once ``stop`` is set (or :meth:`hurry`
        was called) no longer than the grace time; then cut retries short and give calls
        still in flight ``JOIN_S`` seconds in all. Returns how many entries were not
        delivered (journaled for a later pilot)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._draining = True  # senders waiting for a job's next report end now
            self._cond.notify_all()
            while any(q.worker is not None for q in self._queues.values()):
                if stop is not None and stop.is_set():
                    self.hurry(grace)
                ends = [end for end in (deadline, self._cap) if end is not None]
                left = min(ends) - time.monotonic() if ends else None
                if left is not None and left <= 0:
                    break
                self._cond.wait(1.0 if left is None else min(left, 1.0))
        self._stop.set()
        with self._cond:
            workers = [q.worker for q in self._queues.values() if q.worker is not None]
        end = time.monotonic() + JOIN_S
        for worker in workers:
            with contextlib.suppress(RuntimeError):  # made by a post, not started yet
                worker.join(max(0.0, end - time.monotonic()))
        with self._cond:
            left_over = sum(len(q.pending) for q in self._queues.values())
            for queue in self._queues.values():
                queue.close()
            return left_over + self.given_up

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> int:
        """Queue again what journals left by an earlier pilot in this work directory still
        owe; returns how many entries that is. A line that is not a record (cut short by
        the pilot's death or a full disk, or garbage) is skipped, not the whole journal;
        a journal another running pilot holds (a shared ``--work-dir``) is left to it."""
        count = 0
        for path in sorted(self.directory.glob("job-*.jsonl")):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                log.warning("outbox journal %s unreadable (%s): left alone", path, exc)
                continue
            queue = None
            try:
                if _locked(fd):
                    queue = self._recover_one(path)
                else:
                    log.info("outbox journal %s: a running pilot holds it: left alone", path)
            finally:
                if queue is None:
                    os.close(fd)
            if queue is not None:  # it keeps the journal, and its lock, open
                queue.file = os.fdopen(fd, "a", buffering=1)
                count += len(queue.pending)
                with self._cond:
                    self._queues[queue.key] = queue
                    sender = self._sender(queue)
                sender.start()
        return count

    def _recover_one(self, path: Path) -> _JobQueue | None:
        """The queue of what the journal at ``path`` still owes, or None."""
        try:
            text = path.read_text()
        except (OSError, ValueError) as exc:
            log.warning("outbox journal %s unreadable (%s): left alone", path, exc)
            return None
        records, skipped = _records(text)
        if skipped:
            log.warning("outbox journal %s: %d line(s) not readable: skipped", path, skipped)
        head = records[0] if records else {}
        token = head.get("token")
        if "job" not in head:
            log.warning("outbox journal %s names no job: left alone", path)
            return None
        job = MatchedJob(str(head["job"]), "", token if isinstance(token, str) else None)
        entries = [r for r in records if "seq" in r]
        acked = {r["ack"] for r in records if "ack" in r}
        owed = [r for r in entries if r["seq"] not in acked]
        if not owed:
            path.unlink(missing_ok=True)
            return None
        with self._cond:
            if path.stem in self._queues:
                return None
        top = max(r["seq"] for r in entries)
        queue = _JobQueue(job, path, next_seq=top + 1, torn=not text.endswith("\n"))
        queue.final_posted = True  # nothing more will come for it
        queue.recovered = True
        for record in owed:
            data = {k: v for k, v in record.items() if k not in ("seq", "kind")}
            queue.pending.append(_Entry(record["seq"], record["kind"], data))
        log.info("job %s: %d report(s) left by an earlier pilot: sending", job.job_id, len(owed))
        return queue


def _locked(fd: int) -> bool:
    """Lock a journal for this pilot (``flock``: the kernel drops the lock when the pilot
    dies, ``kill -9`` included); False if another running pilot holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        pass  # a file system without locks: go on unlocked
    return True


def _records(text: str) -> tuple[list[dict[str, Any]], int]:
    """A journal's records (its head, entries and acknowledgements), and how many of its
    lines were none of those."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and (
            "job" in record
            or (_is_int(record.get("seq")) and isinstance(record.get("kind"), str))
            or _is_int(record.get("ack"))
        ):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _update(data: Mapping[str, Any]) -> StatusUpdate:
    status = data.get("status")
    return StatusUpdate(
        JobStatus(status) if status is not None else None,
        data.get("minor"),
        data.get("application"),
        float(data["timestamp"]),
        dict(data.get("extra") or {}),
    )


def _describe(batch: Sequence[_Entry]) -> str:
    first = batch[0]
    if first.kind == "status":
        last = batch[-1].data
        shown = "/".join(str(last.get(k)) for k in ("status", "minor") if last.get(k))
        return f"status update ({shown or 'application status'})"
    if first.kind == "output":
        return "output sandbox upload"
    if first.kind == "lfn":
        return f"output data {first.data.get('lfn')}"
    return f"{first.kind!r} report"  # a kind this version does not know (a newer pilot's)


class OutboxBackend:
    """A :class:`pilot.backend.Backend` whose job reports go through an :class:`Outbox`."""

    def __init__(self, inner: Backend, outbox: Outbox) -> None:
        self.inner = inner
        self.outbox = outbox
        self.name = inner.name

    def register(self, stamp: str, info: Mapping[str, Any]) -> None:
        self.inner.register(stamp, info)

    def match(self, resources: Mapping[str, Any]) -> MatchedJob | None:
        return self.inner.match(resources)

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        data = {
            "status": update.status.value if update.status is not None else None,
            "minor": update.minor,
            "application": update.application,
            "timestamp": update.timestamp,
            "extra": dict(update.extra),
        }
        self.outbox.post(job, "status", data)

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        return self.inner.heartbeat(job, metrics)

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        return self.inner.poll_commands(job_ids)

    def fetch_input_sandbox(self, job: MatchedJob, inputs: Inputs, dest_dir: Path) -> list[Path]:
        return self.inner.fetch_input_sandbox(job, inputs, dest_dir)

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        kept = self.outbox.directory / archive.name.lstrip(".")
        try:  # the journal must point at a file that outlives the caller's copy
            kept.unlink(missing_ok=True)
            os.link(archive, kept)
        except OSError:
            kept = archive
        try:
            _raise(self.outbox.wait(self.outbox.post(job, "output", {"archive": str(kept)})))
        finally:
            if kept != archive:
                kept.unlink(missing_ok=True)

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        self.inner.fetch_lfn(job, lfn, dest)

    def store_lfn(
        self, job: MatchedJob, lfn: str, source: Path, output_se: str | None = None
    ) -> None:
        entry = {"lfn": lfn, "path": str(source), "output_se": output_se}
        _raise(self.outbox.wait(self.outbox.post(job, "lfn", entry)))

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        return self.inner.delegate_proxy(job, request_pem, lifetime, limited)

    def upload_pilot_log(self, stamp: str, text: str) -> None:
        self.inner.upload_pilot_log(stamp, text)

    def __getattr__(self, name: str) -> Any:
        """What a backend offers beyond the protocol (``jobwrapper_rules``, its own
        ``output_lfn`` naming, ...) is the inner backend's."""
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()


def _raise(error: PilotError | None) -> None:
    if error is not None:
        raise error


def budget_for(
    retry_for: float | None, slot_end: float | None, grace: float, now: Callable[[], float]
) -> RetryBudget:
    """The outbox's budget: ``retry_for`` if given, else until the slot ends less grace."""
    end = None if slot_end is None else max(now(), slot_end - grace)
    return RetryBudget(retry_for=retry_for, slot_end=end)
