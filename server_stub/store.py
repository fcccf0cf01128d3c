"""SQLite persistence of the matcher stub: jobs, status history, pilots, sandboxes.

One database file in WAL mode, one connection per thread; writers take turns on a lock
of the store (no thread waits in SQLite's busy handler). Waiting jobs are also indexed
in memory by task queue (:mod:`server_stub.taskqueues`), which is how a match request
finds its job; the index changes only under that lock, after a commit, and is rebuilt
from the database when a store opens, so one process owns a database file (a lock on
``<database>.lock`` keeps a second one out: it would match from an index that never
learns of the first one's jobs, and the other way round). Claiming
stays a single ``UPDATE ... WHERE status = 'Waiting'`` inside an immediate transaction,
so two pilots never get the same job.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pilot.backends.base import FINAL_STATUSES, JobStatus, Minor
from pilot.job import jdl
from server_stub import matching
from server_stub.taskqueues import TaskQueues

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    jdl TEXT NOT NULL,
    owner TEXT,
    status TEXT NOT NULL,
    minor TEXT NOT NULL DEFAULT '',
    application TEXT NOT NULL DEFAULT '',
    priority INTEGER NOT NULL DEFAULT 1,
    requirements TEXT NOT NULL,
    submitted REAL NOT NULL,
    updated REAL NOT NULL,
    pilot TEXT,
    site TEXT,
    token_hash TEXT,
    heartbeat REAL,
    heartbeat_data TEXT,
    reschedules INTEGER NOT NULL DEFAULT 0,
    kill_requested INTEGER NOT NULL DEFAULT 0,
    output_sandbox TEXT,
    timing TEXT,
    name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs(status, priority DESC, id);
CREATE TABLE IF NOT EXISTS history (
    job_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    status TEXT NOT NULL,
    minor TEXT NOT NULL,
    application TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_job ON history(job_id, ts);
CREATE TABLE IF NOT EXISTS pilots (
    stamp TEXT PRIMARY KEY,
    registered REAL NOT NULL,
    info TEXT NOT NULL,
    log TEXT
);
CREATE TABLE IF NOT EXISTS proxies (
    owner TEXT PRIMARY KEY,
    pem BLOB NOT NULL,
    not_after REAL NOT NULL,
    uploaded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS proxy_requests (
    id TEXT PRIMARY KEY,
    key_pem BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    lfn TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS match_requests (
    request_hash TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    pilot TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS match_requests_created ON match_requests(created);
CREATE TABLE IF NOT EXISTS user_requests (
    request_hash TEXT PRIMARY KEY,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS user_requests_created ON user_requests(created);
CREATE TABLE IF NOT EXISTS payload_tokens (
    token_hash TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS payload_tokens_job ON payload_tokens(job_id);
"""
MATCH_REQUEST_KEEP_S = 7 * 86400.0  # how long a match request id is remembered
USER_REQUEST_KEEP_S = 7 * 86400.0  # how long a user's kill/delete/reschedule id is remembered
PAYLOAD_TOKEN_PREFIX = "pjt."  # a payload's bearer token: never a pilot's or a user's
MAX_PAYLOAD_TOKEN_S = 7 * 86400.0  # cap on one payload token's lifetime (as a delegated proxy's)
# a payload token lives while its job runs: any other status revokes it
TOKEN_LIVE = frozenset({JobStatus.MATCHED, JobStatus.RUNNING, JobStatus.COMPLETING})


class StoreError(Exception):
    """A request the store refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Claim:
    job_id: int
    jdl: str
    token: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_token(request_id: str, job_id: int) -> str:
    """The job token of a job claimed by match request ``request_id`` (a random secret of
    the pilot's): a retry of the request gets the same token, and the stub still stores
    only the token's hash."""
    return hashlib.sha256(f"job-token:{job_id}:{request_id}".encode()).hexdigest()


def payload_token(job_id: int, secret: str) -> str:
    """The payload token of job ``job_id`` minted for the pilot's ``secret``: a retry of
    the mint (its answer lost) or a renewal gets the same token, and only its hash is
    stored."""
    digest = hashlib.sha256(f"payload-token:{job_id}:{secret}".encode()).hexdigest()
    return PAYLOAD_TOKEN_PREFIX + digest


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._owner = _own(path)
        self._local = threading.local()
        self._write = threading.Lock()
        self._pending: list[tuple[int, int | None, str]] = []  # index changes of this tx
        self.queues = TaskQueues()
        db = self._conn()
        db.executescript(SCHEMA)
        _add_column(db, "jobs", "spent_token_hash", "TEXT")
        _add_column(db, "files", "owner", "TEXT")
        for row in db.execute(
            "SELECT id, priority, requirements FROM jobs WHERE status = ? ORDER BY id",
            (JobStatus.WAITING,),
        ):
            self.queues.add(int(row["id"]), int(row["priority"]), row["requirements"])

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        with self._write:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                self._pending.clear()
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError) and _unwritable(exc):
                    log.error("cannot write the database %s: %s", self.path, exc)
                    raise StoreError(f"the stub cannot write its database: {exc}", 503) from exc
                raise
            pending, self._pending = self._pending, []
            for job_id, priority, requirements in pending:
                if priority is None:
                    self.queues.remove(job_id)
                else:
                    self.queues.add(job_id, priority, requirements)

    def _track(self, job_id: int, old: str, new: str, row: sqlite3.Row) -> None:
        """Keep the task-queue index in step with a status change (applied on commit)."""
        if old == new or JobStatus.WAITING not in (old, new):
            return
        if new == JobStatus.WAITING:
            self._pending.append((job_id, int(row["priority"]), row["requirements"]))
        else:
            self._pending.append((job_id, None, ""))

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, attrs: Mapping[str, jdl.Value], owner: str | None) -> int:
        return self.submit_many([attrs], owner)[0]

    def submit_many(self, jobs: Sequence[Mapping[str, jdl.Value]], owner: str | None) -> list[int]:
        """Store expanded jobs, all or none (each is validated before any is stored)."""
        rows = []
        shapes: dict[tuple[Any, ...], str] = {}  # parametric jobs mostly share one
        previous: Mapping[str, jdl.Value] = {}
        priority, req_text = 0, ""
        for attrs in jobs:
            free = _free_text_change(previous, attrs)
            if free is not None:
                # Only free-text attributes differ from the job before (a parametric
                # Arguments, say): validate just those; priority and requirements stay.
                jdl.JobDescription.from_attrs({"Executable": "x", **free})
            else:
                desc = jdl.JobDescription.from_attrs(attrs)
                req = matching.requirements(desc)
                key = tuple(tuple(v) if isinstance(v, list) else v for v in req.values())
                if (text := shapes.get(key)) is None:
                    text = shapes[key] = json.dumps(req)
                priority, req_text = desc.priority, text
            rows.append((jdl.dumps(attrs), priority, req_text, job_name(attrs)))
            previous = attrs
        now = time.time()
        ids: list[int] = []
        with self._tx() as db:
            for text, priority, requirements, name in rows:
                cur = db.execute(
                    "INSERT INTO jobs (jdl, owner, status, minor, priority, requirements,"
                    " submitted, updated, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        text,
                        owner,
                        JobStatus.WAITING,
                        Minor.PILOT_AGENT_SUBMISSION,
                        priority,
                        requirements,
                        now,
                        now,
                        name,
                    ),
                )
                job_id = int(cur.lastrowid or 0)
                ids.append(job_id)
                self._pending.append((job_id, priority, requirements))
            db.executemany(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry
                    for job_id in ids
                    for entry in (
                        (job_id, now, JobStatus.RECEIVED, Minor.JOB_ACCEPTED, "", "JobManager"),
                        (
                            job_id,
                            now,
                            JobStatus.WAITING,
                            Minor.PILOT_AGENT_SUBMISSION,
                            "",
                            "Optimizer",
                        ),
                    )
                ),
            )
        return ids

    def _record(
        self,
        db: sqlite3.Connection,
        job_id: int,
        status: str | None,
        minor: str | None,
        application: str | None,
        source: str,
        ts: float | None = None,
    ) -> None:
        ts = time.time() if ts is None else ts
        row = db.execute(
            "SELECT status, minor, application, priority, requirements FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        self._track(job_id, row["status"], row["status"] if status is None else status, row)
        status = row["status"] if status is None else status
        minor = row["minor"] if minor is None else minor
        application = row["application"] if application is None else application
        db.execute(
            "UPDATE jobs SET status = ?, minor = ?, application = ?, updated = ? WHERE id = ?",
            (status, minor, application, ts, job_id),
        )
        db.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, ts, status, minor, application, source),
        )
        if status not in TOKEN_LIVE:  # ended, killed, deleted, stalled or rescheduled
            db.execute("DELETE FROM payload_tokens WHERE job_id = ?", (job_id,))

    def job(self, job_id: int) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id}", 404)
        return _job_view(row)

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM jobs", tuple[str, ...]()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_job_view(r) for r in self._conn().execute(sql + " ORDER BY id", args)]

    def history(self, job_id: int) -> list[dict[str, Any]]:
        self.job(job_id)
        rows = self._conn().execute(
            "SELECT * FROM history WHERE job_id = ? ORDER BY ts, rowid", (job_id,)
        )
        return [
            {
                "Status": r["status"],
                "MinorStatus": r["minor"],
                "ApplicationStatus": r["application"],
                "Source": r["source"],
                "Timestamp": r["ts"],
            }
            for r in rows
        ]

    def jdl_of(self, job_id: int) -> str:
        row = self._conn().execute("SELECT jdl FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id}", 404)
        return str(row["jdl"])

    # -- matching -----------------------------------------------------------------------

    def match(
        self,
        resources: Mapping[str, Any],
        pilot: str,
        dry_run: bool,
        request_id: str | None = None,
    ) -> Claim | None:
        """Claim the best waiting job for ``resources`` (highest priority, then oldest),
        found through the task queues (see :mod:`server_stub.taskqueues`).

        A ``request_id`` seen before answers with the job it claimed then (its reply was
        lost), with the same token, as long as that job is still only Matched."""
        with self._tx() as db:
            if request_id and not dry_run:
                again = self._replay(db, request_id, pilot)
                if again is not None:
                    return again
            while (job_id := self.queues.best(resources)) is not None:
                row = db.execute(
                    "SELECT jdl FROM jobs WHERE id = ? AND status = ?",
                    (job_id, JobStatus.WAITING),
                ).fetchone()
                if row is None:  # changed behind the index's back: forget it, look again
                    log.warning("job %d in a task queue but not Waiting", job_id)
                    self.queues.remove(job_id)
                    continue
                if dry_run:
                    return Claim(job_id, row["jdl"], "")
                claim = self._claim(db, job_id, row["jdl"], pilot, resources, request_id)
                if request_id:
                    self._remember_request(db, request_id, pilot, job_id)
                return claim
        return None

    def _replay(self, db: sqlite3.Connection, request_id: str, pilot: str) -> Claim | None:
        seen = db.execute(
            "SELECT job_id, pilot FROM match_requests WHERE request_hash = ?",
            (hash_token(request_id),),
        ).fetchone()
        if seen is None:
            return None
        job_id = int(seen["job_id"])
        row = db.execute(
            "SELECT status, pilot, jdl, token_hash FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        token = request_token(request_id, job_id)
        if (
            row is None
            or row["status"] != JobStatus.MATCHED
            or seen["pilot"] != pilot
            or row["token_hash"] != hash_token(token)
        ):
            raise StoreError(f"match request already answered with job {job_id}", 409)
        return Claim(job_id, str(row["jdl"]), token)  # the same answer, the same token

    def _remember_request(
        self, db: sqlite3.Connection, request_id: str, pilot: str, job_id: int
    ) -> None:
        now = time.time()
        db.execute("DELETE FROM match_requests WHERE created < ?", (now - MATCH_REQUEST_KEEP_S,))
        db.execute(
            "INSERT OR REPLACE INTO match_requests VALUES (?, ?, ?, ?)",
            (hash_token(request_id), job_id, pilot, now),
        )

    def _claim(
        self,
        db: sqlite3.Connection,
        job_id: int,
        jdl_text: str,
        pilot: str,
        resources: Mapping[str, Any],
        request_id: str | None = None,
    ) -> Claim:
        token = request_token(request_id, job_id) if request_id else secrets.token_urlsafe(32)
        now = time.time()
        # What _record does, in one UPDATE: the job is known to be Waiting (the hot path).
        db.execute(
            "UPDATE jobs SET status = ?, minor = ?, application = ?, updated = ?, pilot = ?,"
            " site = ?, token_hash = ?, heartbeat = ? WHERE id = ?",
            (
                JobStatus.MATCHED,
                Minor.MATCHED,
                "",
                now,
                pilot,
                resources.get("Site"),
                hash_token(token),
                now,
                job_id,
            ),
        )
        db.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, now, JobStatus.MATCHED, Minor.MATCHED, "", "Matcher"),
        )
        self._pending.append((job_id, None, ""))  # leaves its task queue on commit
        return Claim(job_id, jdl_text, token)

    def near_misses(self, resources: Mapping[str, Any], limit: int = 5) -> list[dict[str, Any]]:
        """Why the first ``limit`` task queues (in matching order) that do not fit
        ``resources`` do not: each with its oldest waiting job and how many wait in it."""
        with self._write:
            misses = self.queues.misses(resources, limit)
        return [
            {
                "job_id": job_id,
                "reasons": matching.mismatches(queue.requirements, resources),
                "task_queue": queue.tq_id,
                "waiting": queue.waiting,
            }
            for queue, job_id in misses
        ]

    # -- updates from pilots ------------------------------------------------------------

    def check_token(self, job_id: int, token: str | None, *, spent_ok: bool = False) -> bool:
        """Refuse (403) a token that is not the job's; True when it is the job's spent
        token (revoked by the job's final status) and ``spent_ok`` lets it through."""
        row = (
            self._conn()
            .execute("SELECT token_hash, spent_token_hash FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise StoreError(f"no job {job_id}", 404)
        given = hash_token(token) if token else ""
        if token and row["token_hash"] and secrets.compare_digest(row["token_hash"], given):
            return False
        spent = row["spent_token_hash"]
        if spent_ok and token and spent and secrets.compare_digest(spent, given):
            return True
        raise StoreError(f"job token does not grant access to job {job_id}", 403)

    def has_update(self, job_id: int, ts: float, source: str = "Pilot") -> bool:
        """Whether the update stamped ``ts`` from ``source`` is already recorded."""
        return _has_update(self._conn(), job_id, ts, source)

    def set_status(self, job_id: int, update: Mapping[str, Any], ts: float) -> None:
        status = update.get("Status")
        if status is not None and status not in set(JobStatus):
            raise StoreError(f"unknown status {status!r}")
        source = str(update.get("Source", "Pilot"))
        with self._tx() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}", 404)
            if _has_update(db, job_id, ts, source):
                return  # a retry of an update already recorded: nothing to do
            if row["status"] in FINAL_STATUSES and status not in (None, row["status"]):
                raise StoreError(f"job {job_id} is already {row['status']}", 409)
            self._record(
                db,
                job_id,
                status,
                update.get("MinorStatus"),
                update.get("ApplicationStatus"),
                source,
                ts,
            )
            if "Timing" in update:
                db.execute(
                    "UPDATE jobs SET timing = ? WHERE id = ?",
                    (json.dumps(update["Timing"]), job_id),
                )
            if status in FINAL_STATUSES:  # kept aside so that a retry of this update succeeds
                db.execute(
                    "UPDATE jobs SET spent_token_hash = token_hash, token_hash = NULL"
                    " WHERE id = ? AND token_hash IS NOT NULL",
                    (job_id,),
                )

    def commands(self, pilot: str, job_ids: list[int]) -> list[tuple[int, str]]:
        """Pending commands for ``pilot``'s jobs (a read only: cheaper than a heartbeat)."""
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        rows = self._conn().execute(
            f"SELECT id FROM jobs WHERE kill_requested = 1 AND pilot = ? AND id IN ({marks})",
            (pilot, *job_ids),
        )
        return [(int(r["id"]), "Kill") for r in rows]

    def heartbeat(self, job_id: int, data: Mapping[str, Any]) -> list[str]:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET heartbeat = ?, heartbeat_data = ? WHERE id = ?",
                (time.time(), json.dumps(data), job_id),
            )
            row = db.execute("SELECT kill_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return ["Kill"] if row and row["kill_requested"] else []

    def attach_output(self, job_id: int, sha256: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET output_sandbox = ? WHERE id = ?", (sha256, job_id))

    def output_of(self, job_id: int) -> str:
        sha = self.job(job_id)["output_sandbox"]
        if not sha:
            raise StoreError(f"job {job_id} has no output sandbox", 404)
        return str(sha)

    # -- user actions -------------------------------------------------------------------

    # A user's kill, delete or reschedule may carry a request id (``X-Request-Id``) that
    # the client's retries of that one call reuse: a retry whose first try landed (its
    # reply was lost) gets the first answer again and changes nothing. A new command has
    # a new id, so killing a killed job on purpose still answers "already Killed".

    def kill(self, job_id: int, request_id: str | None = None) -> str:
        """Kill a job: immediately when it is not running, else on the next heartbeat."""
        with self._tx() as db:
            if (again := _answered(db, request_id, "kill", job_id)) is not None:
                return again
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}", 404)
            status = row["status"]
            if status in FINAL_STATUSES:
                raise StoreError(f"job {job_id} is already {status}", 409)
            if status in (JobStatus.RECEIVED, JobStatus.WAITING, JobStatus.STALLED):
                self._record(db, job_id, JobStatus.KILLED, Minor.KILLED_BY_USER, None, "JobManager")
                return _answer(db, request_id, "kill", job_id, "Killed")
            db.execute("UPDATE jobs SET kill_requested = 1 WHERE id = ?", (job_id,))
            db.execute("DELETE FROM payload_tokens WHERE job_id = ?", (job_id,))  # at once
            self._record(db, job_id, None, Minor.KILL_REQUESTED, None, "JobManager")
            return _answer(db, request_id, "kill", job_id, Minor.KILL_REQUESTED)

    def delete(self, job_id: int, request_id: str | None = None) -> str:
        with self._tx() as db:
            if (again := _answered(db, request_id, "delete", job_id)) is not None:
                return again
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}", 404)
            if row["status"] == JobStatus.DELETED:  # a new command, not a retry of one
                raise StoreError(f"job {job_id} is already Deleted", 409)
            if row["status"] in (JobStatus.MATCHED, JobStatus.RUNNING, JobStatus.COMPLETING):
                db.execute("UPDATE jobs SET kill_requested = 1 WHERE id = ?", (job_id,))
            self._record(db, job_id, JobStatus.DELETED, Minor.DELETED_BY_USER, None, "JobManager")
            db.execute("UPDATE jobs SET token_hash = NULL WHERE id = ?", (job_id,))
            return _answer(db, request_id, "delete", job_id, "Deleted")

    # -- stalled jobs -------------------------------------------------------------------

    def reap_stalled(self, timeout: float, max_reschedules: int) -> list[int]:
        """Jobs whose pilot went silent: Stalled, then back to Waiting or Failed."""
        limit = time.time() - timeout
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, reschedules FROM jobs WHERE status IN (?, ?, ?) AND heartbeat < ?",
                (JobStatus.MATCHED, JobStatus.RUNNING, JobStatus.COMPLETING, limit),
            ).fetchall()
            for row in rows:
                job_id = int(row["id"])
                db.execute(
                    "UPDATE jobs SET token_hash = NULL, pilot = NULL WHERE id = ?", (job_id,)
                )
                self._record(
                    db,
                    job_id,
                    JobStatus.STALLED,
                    Minor.STALLED_NO_PILOT,
                    "",
                    "StalledJobAgent",
                )
                if row["reschedules"] < max_reschedules:
                    db.execute(
                        "UPDATE jobs SET reschedules = reschedules + 1, kill_requested = 0"
                        " WHERE id = ?",
                        (job_id,),
                    )
                    self._record(db, job_id, JobStatus.WAITING, Minor.RESCHEDULED, "", "JobManager")
                else:
                    self._record(
                        db,
                        job_id,
                        JobStatus.FAILED,
                        Minor.MAX_RESCHEDULES,
                        None,
                        "JobManager",
                    )
        return [int(r["id"]) for r in rows]

    # -- pilots and files ---------------------------------------------------------------

    def register_pilot(self, stamp: str, info: Mapping[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO pilots (stamp, registered, info) VALUES (?, ?, ?)"
                " ON CONFLICT(stamp) DO UPDATE SET info = excluded.info",
                (stamp, time.time(), json.dumps(info)),
            )

    def pilots(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT stamp, registered, info FROM pilots ORDER BY registered"
        )
        return [
            {"stamp": r["stamp"], "registered": r["registered"], **json.loads(r["info"])}
            for r in rows
        ]

    def set_pilot_log(self, stamp: str, text: str) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE pilots SET log = ? WHERE stamp = ?", (text, stamp))
            if cur.rowcount == 0:
                raise StoreError(f"no pilot {stamp}", 404)

    def pilot_log(self, stamp: str) -> str:
        row = self._conn().execute("SELECT log FROM pilots WHERE stamp = ?", (stamp,)).fetchone()
        if row is None:
            raise StoreError(f"no pilot {stamp}", 404)
        return str(row["log"] or "")

    def put_file(
        self, lfn: str, sha256: str, size: int, owner: str | None, only_owner: bool = False
    ) -> None:
        """Store ``lfn`` for ``owner``; with ``only_owner`` (a payload token) a file that
        is someone else's is refused (403)."""
        with self._tx() as db:
            if only_owner:
                row = db.execute("SELECT owner FROM files WHERE lfn = ?", (lfn,)).fetchone()
                if row is not None and row["owner"] != owner:
                    raise StoreError(f"{lfn} is not a file of the job's owner", 403)
            db.execute(
                "INSERT INTO files (lfn, sha256, size, owner) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(lfn) DO UPDATE SET sha256 = excluded.sha256,"
                " size = excluded.size, owner = excluded.owner",
                (lfn, sha256, size, owner),
            )

    def file(self, lfn: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT * FROM files WHERE lfn = ?", (lfn,)).fetchone()
        if row is None:
            raise StoreError(f"no file {lfn}", 404)
        return {
            "lfn": row["lfn"],
            "sha256": row["sha256"],
            "size": row["size"],
            "owner": row["owner"],
        }

    def owns_content(self, owner: str, sha256: str) -> bool:
        """Whether a catalogue file of ``owner`` has the content ``sha256``."""
        row = (
            self._conn()
            .execute("SELECT 1 FROM files WHERE owner = ? AND sha256 = ? LIMIT 1", (owner, sha256))
            .fetchone()
        )
        return row is not None

    # -- payload tokens ---------------------------------------------------------------------

    def mint_payload_token(
        self, job_id: int, secret: str, lifetime: float
    ) -> tuple[str, float] | None:
        """The payload token of a running job and when it expires (a repeat with the same
        ``secret`` gives the same token a new expiry: a retry or a renewal); None when the
        job has no owner identity. A job has one payload token at a time."""
        token = payload_token(job_id, secret)
        expires = time.time() + min(lifetime, MAX_PAYLOAD_TOKEN_S)
        with self._tx() as db:
            row = db.execute(
                "SELECT status, owner, kill_requested FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}", 404)
            if row["status"] not in TOKEN_LIVE:
                raise StoreError(f"job {job_id} is {row['status']}: no payload token", 409)
            if row["kill_requested"]:
                raise StoreError(f"job {job_id} is being killed: no payload token", 409)
            if not row["owner"]:
                return None
            db.execute("DELETE FROM payload_tokens WHERE job_id = ?", (job_id,))
            db.execute(
                "INSERT INTO payload_tokens VALUES (?, ?, ?, ?)",
                (hash_token(token), job_id, row["owner"], expires),
            )
        return token, expires

    def payload_token_owner(self, token: str) -> tuple[int, str]:
        """The job and owner of a live payload token; 401 when it is unknown, revoked
        (its job ended) or expired."""
        row = (
            self._conn()
            .execute(
                "SELECT t.job_id, t.owner, t.expires, j.status FROM payload_tokens t"
                " JOIN jobs j ON j.id = t.job_id WHERE t.token_hash = ?",
                (hash_token(token),),
            )
            .fetchone()
        )
        if row is None or row["status"] not in TOKEN_LIVE:
            raise StoreError("payload token unknown or revoked (its job has ended)", 401)
        if row["expires"] <= time.time():
            raise StoreError("payload token expired", 401)
        return int(row["job_id"]), str(row["owner"])

    # -- Job and Pilot Monitor (server_stub/monitor.py): read queries and reschedule --------
    # Everything the web pages need is filtered, sorted, counted and paged here in SQL,
    # on indexes (MONITOR_INDEXES), so that pages stay fast at 10^5 jobs (bench/monitor.py).

    def ensure_monitor_indexes(self) -> None:
        db = self._conn()
        columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
        if "name" not in columns:  # a database written before the monitor existed
            db.execute("ALTER TABLE jobs ADD COLUMN name TEXT NOT NULL DEFAULT ''")
        db.executescript(MONITOR_INDEXES)

    def monitor_jobs(
        self,
        filters: Mapping[str, str],
        sort: str = "id",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of jobs matching ``filters`` (keys of MONITOR_FILTERS) and how many
        match in all. ``sort`` is a key of MONITOR_SORTS; ties are broken by job id."""
        where, args = _monitor_where(filters)
        column = MONITOR_SORTS[sort]
        way = "DESC" if descending else "ASC"
        db = self._conn()
        total = int(db.execute(f"SELECT COUNT(*) FROM jobs{where}", args).fetchone()[0])
        order = f"ORDER BY {column} {way}, id {way}"
        # The page's ids first, from narrow indexes; then only those rows (with their JDL).
        sql = (
            f"SELECT {_LIST_COLUMNS} FROM jobs WHERE id IN"
            f" (SELECT id FROM jobs{where} {order} LIMIT ? OFFSET ?) {order}"
        )
        rows = db.execute(sql, (*args, limit, offset))
        return [_monitor_row(r) for r in rows], total

    def monitor_choices(self, column: str, limit: int = 200) -> list[str]:
        """Distinct values of an exact-match filter column (read from its index)."""
        if column not in ("status", "site", "owner"):
            raise ValueError(f"no choices for {column!r}")
        rows = self._conn().execute(
            f"SELECT DISTINCT {column} FROM jobs WHERE {column} IS NOT NULL"
            f" ORDER BY {column} LIMIT ?",
            (limit,),
        )
        return [str(r[0]) for r in rows]

    def jobs_of_pilot(self, stamp: str, limit: int = 500) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            f"SELECT {_LIST_COLUMNS} FROM jobs WHERE pilot = ? ORDER BY id DESC LIMIT ?",
            (stamp, limit),
        )
        return [_monitor_row(r) for r in rows]

    def pilot(self, stamp: str) -> dict[str, Any]:
        row = (
            self._conn()
            .execute(
                "SELECT stamp, registered, info, length(log) AS log_size FROM pilots"
                " WHERE stamp = ?",
                (stamp,),
            )
            .fetchone()
        )
        if row is None:
            raise StoreError(f"no pilot {stamp}", 404)
        return _pilot_view(row)

    def monitor_pilots(self, offset: int = 0, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
        """A page of pilots, newest first, each with the number of jobs it holds or ran."""
        db = self._conn()
        total = int(db.execute("SELECT COUNT(*) FROM pilots").fetchone()[0])
        rows = db.execute(
            "SELECT stamp, registered, info, length(log) AS log_size,"
            " (SELECT COUNT(*) FROM jobs WHERE jobs.pilot = pilots.stamp) AS jobs"
            " FROM pilots ORDER BY registered DESC, stamp LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [{**_pilot_view(r), "jobs": r["jobs"]} for r in rows], total

    def reschedule(self, job_id: int, request_id: str | None = None) -> str:
        """Put a finished or stalled job back to Waiting (a user's reschedule); a retry
        with the same ``request_id`` answers again without rescheduling twice."""
        with self._tx() as db:
            if (again := _answered(db, request_id, "reschedule", job_id)) is not None:
                return again
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}", 404)
            if row["status"] not in RESCHEDULABLE:
                raise StoreError(
                    f"job {job_id} is {row['status']}: only a "
                    + ", ".join(sorted(RESCHEDULABLE))
                    + " job can be rescheduled",
                    409,
                )
            db.execute(
                "UPDATE jobs SET token_hash = NULL, pilot = NULL, site = NULL, heartbeat = NULL,"
                " heartbeat_data = NULL, kill_requested = 0, output_sandbox = NULL,"
                " timing = NULL, reschedules = reschedules + 1 WHERE id = ?",
                (job_id,),
            )
            self._record(db, job_id, JobStatus.WAITING, "Job Rescheduled", "", "JobManager")
            return _answer(db, request_id, "reschedule", job_id, "Rescheduled")

    # -- stored proxies (delegation) --------------------------------------------------------

    def add_proxy_request(self, request_id: str, key_pem: bytes, max_age: float) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM proxy_requests WHERE created < ?", (now - max_age,))
            db.execute("INSERT INTO proxy_requests VALUES (?, ?, ?)", (request_id, key_pem, now))

    def take_proxy_request(self, request_id: str, max_age: float) -> bytes:
        """The key of a pending upload request, removed (each request is used once)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT key_pem, created FROM proxy_requests WHERE id = ?", (request_id,)
            ).fetchone()
            db.execute("DELETE FROM proxy_requests WHERE id = ?", (request_id,))
        if row is None or row["created"] < time.time() - max_age:
            raise StoreError(f"no pending proxy upload {request_id} (expired?)", 404)
        return bytes(row["key_pem"])

    def put_proxy(self, owner: str, pem: bytes, not_after: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO proxies VALUES (?, ?, ?, ?) ON CONFLICT(owner) DO UPDATE"
                " SET pem = excluded.pem, not_after = excluded.not_after,"
                " uploaded = excluded.uploaded",
                (owner, pem, not_after, time.time()),
            )

    def proxy_of(self, owner: str) -> tuple[bytes, float] | None:
        row = (
            self._conn()
            .execute("SELECT pem, not_after FROM proxies WHERE owner = ?", (owner,))
            .fetchone()
        )
        return None if row is None else (bytes(row["pem"]), float(row["not_after"]))


# What the monitor may filter on (exact or substring match) and sort by; the SQL columns.
MONITOR_FILTERS = {
    "status": ("status", "exact"),
    "site": ("site", "exact"),
    "owner": ("owner", "exact"),
    "minor": ("minor", "contains"),
    "application": ("application", "contains"),
    "name": ("name", "contains"),
}
MONITOR_SORTS = {
    "id": "id",
    "status": "status",
    "minor": "minor",
    "application": "application",
    "site": "site",
    "owner": "owner",
    "name": "name",
    "submitted": "id",  # ids are given in submission order: no index of its own needed
    "updated": "updated",
}
RESCHEDULABLE = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.KILLED, JobStatus.STALLED})
# Indexes: mon_list is a narrow copy of the rows in id order with the columns that
# change at every status update, so that skipping to a deep page, sorting by minor or
# application status or update time, and the text filters on them read it instead of
# every job's JDL; one index there costs each pilot update far less than one per column
# (the match and two status updates of a job: +15 % CPU with these indexes, +40 % with
# one per column). The others serve the exact filters and the columns written once
# (name, site, owner, pilot), in the table's default order. The application status
# has one of its own too (mon_application): sorting by it deep into the list read and
# sorted every row of mon_list (0.07-0.13 s a page at 10^5 jobs, bench/monitor.py);
# a job is inserted with an empty one, so submitting appends to one end of the index
# (10^5 submissions: no change in the stub's CPU time measured by bench/matcher.py).
MONITOR_INDEXES = """
CREATE INDEX IF NOT EXISTS mon_list ON jobs(id, status, minor, application, updated);
CREATE INDEX IF NOT EXISTS mon_status ON jobs(status, id);
CREATE INDEX IF NOT EXISTS mon_site ON jobs(site, id);
CREATE INDEX IF NOT EXISTS mon_owner ON jobs(owner, id);
CREATE INDEX IF NOT EXISTS mon_name ON jobs(name, id);
CREATE INDEX IF NOT EXISTS mon_pilot ON jobs(pilot, id);
CREATE INDEX IF NOT EXISTS mon_application ON jobs(application, id);
"""
_LIST_COLUMNS = "id, name, status, minor, application, site, owner, pilot, submitted, updated"


def _own(path: Path) -> BinaryIO:
    """Lock ``<path>.lock`` for this process (held while the file stays open). A POSIX
    lock: the same process may open a database again (a test reopening its store)."""
    lock = open(path.parent / (path.name + ".lock"), "ab")  # noqa: SIM115 (kept open)
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StoreError(
            f"{path} is in use by another process (a pilot-stub serve?):"
            " a stub database has one process at a time",
            409,
        ) from None
    return lock


def _unwritable(exc: sqlite3.OperationalError) -> bool:
    """The database cannot be written just now (disk full, I/O error, read-only)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY)


def job_name(attrs: Mapping[str, jdl.Value]) -> str:
    """The JobName the monitor shows and filters on ("" when there is none)."""
    value = jdl.get(attrs, "JobName")
    return "" if value is None else str(value)


def _monitor_where(filters: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    clauses, args = [], []
    for key, value in filters.items():
        if not value:
            continue
        column, how = MONITOR_FILTERS[key]
        if how == "exact":
            clauses.append(f"{column} = ?")
            args.append(value)
        else:
            escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(f"{column} LIKE ? ESCAPE '\\'")
            args.append(f"%{escaped}%")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)


def _monitor_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "job_id": row["id"],
        "job_name": row["name"],
        "status": row["status"],
        "minor_status": row["minor"],
        "application_status": row["application"],
        "site": row["site"],
        "owner": row["owner"],
        "pilot": row["pilot"],
        "submitted": row["submitted"],
        "updated": row["updated"],
    }


def _pilot_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        **json.loads(row["info"]),
        "stamp": row["stamp"],
        "registered": row["registered"],
        "log_size": row["log_size"] or 0,
    }


# Attributes that JobDescription reads on their own (no other attribute depends on them)
# and that neither matching nor the priority looks at.
_FREE_TEXT = frozenset({"arguments", "jobname", "stdoutput", "stderror"})


def _free_text_change(
    before: Mapping[str, jdl.Value], attrs: Mapping[str, jdl.Value]
) -> dict[str, jdl.Value] | None:
    """The attributes of ``attrs`` that differ from ``before`` when ``before`` was valid
    and only free-text ones differ (same names in the same order); else None."""
    if not before or len(before) != len(attrs):
        return None
    changed: set[str] = set()
    for (name, value), (name_before, value_before) in zip(
        attrs.items(), before.items(), strict=True
    ):
        if name != name_before:
            return None
        if not _same(value, value_before):
            if (folded := name.casefold()) not in _FREE_TEXT:
                return None
            changed.add(folded)
    # every spelling of a changed name, in order: the last one written is the one read
    return {name: value for name, value in attrs.items() if name.casefold() in changed}


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``True == 1``, but not for JDL)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _request_key(request_id: str, action: str, job_id: int) -> str:
    return hash_token(f"{action}:{job_id}:{request_id}")


def _answered(
    db: sqlite3.Connection, request_id: str | None, action: str, job_id: int
) -> str | None:
    """The answer already given to this user request (a retry of it), or None."""
    if not request_id:
        return None
    row = db.execute(
        "SELECT result FROM user_requests WHERE request_hash = ?",
        (_request_key(request_id, action, job_id),),
    ).fetchone()
    return None if row is None else str(row["result"])


def _answer(
    db: sqlite3.Connection, request_id: str | None, action: str, job_id: int, result: str
) -> str:
    """Remember ``result`` as the answer to this user request (same transaction as the
    action: both land or neither); forget requests older than USER_REQUEST_KEEP_S."""
    if request_id:
        now = time.time()
        db.execute("DELETE FROM user_requests WHERE created < ?", (now - USER_REQUEST_KEEP_S,))
        db.execute(
            "INSERT OR REPLACE INTO user_requests VALUES (?, ?, ?)",
            (_request_key(request_id, action, job_id), result, now),
        )
    return result


def _has_update(db: sqlite3.Connection, job_id: int, ts: float, source: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM history WHERE job_id = ? AND ts = ? AND source = ?", (job_id, ts, source)
    ).fetchone()
    return row is not None


def _add_column(db: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """Add a column that databases made by an older stub lack (once)."""
    have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    if column not in have:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _job_view(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "job_id": row["id"],
        "status": row["status"],
        "minor_status": row["minor"],
        "application_status": row["application"],
        "owner": row["owner"],
        "site": row["site"],
        "pilot": row["pilot"],
        "priority": row["priority"],
        "submitted": row["submitted"],
        "updated": row["updated"],
        "reschedules": row["reschedules"],
        "heartbeat": json.loads(row["heartbeat_data"]) if row["heartbeat_data"] else None,
        "output_sandbox": row["output_sandbox"],
        "timing": json.loads(row["timing"]) if row["timing"] else None,
        "job_name": row["name"],
    }
