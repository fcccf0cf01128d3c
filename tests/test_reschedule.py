"""kill -9 of a pilot mid-job: the stub marks the job Stalled and reschedules it, another
pilot completes it, and no job is lost or done twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, Stub, start_stub
from tests.payloads.support import (
    describe,
    kill_marked,
    marked_processes,
    minor_statuses,
    new_mark,
    payload_jdl,
    start_pilot,
    wait_for,
)

BEAT = ["--heartbeat-interval", "0.5", "--sample-interval", "0.2"]


@pytest.fixture
def fast_reaping_stub(tmp_path: Path) -> Iterator[Stub]:
    handle = start_stub(tmp_path / "stub", stalled_after=2.0, reap_interval=0.2)
    yield handle
    handle.client.close()
    handle.server.stop()


def pilot_of(stub: Stub, job: int) -> object:
    return stub.client.job(job)["pilot"]


def done_counts(stub: Stub) -> dict[int, int]:
    """How many times each job went Done, from the stub's status history."""
    db = sqlite3.connect(stub.server.settings.db)
    try:
        rows = db.execute(
            "SELECT jobs.id, COUNT(history.job_id) FROM jobs LEFT JOIN history"
            " ON history.job_id = jobs.id AND history.status = 'Done' GROUP BY jobs.id"
        ).fetchall()
    finally:
        db.close()
    return {int(job): int(count) for job, count in rows}


def kill_hard(pilot: subprocess.Popen[str]) -> None:
    pilot.send_signal(signal.SIGKILL)
    pilot.wait(10)


def test_killed_pilot_job_is_rescheduled_and_completed(
    fast_reaping_stub: Stub, tmp_path: Path
) -> None:
    stub, mark = fast_reaping_stub, new_mark("resched")
    (job,) = stub.submit(payload_jdl("stamps.py", mark, 1.0))
    first = start_pilot(stub, tmp_path / "p1", *BEAT, *FAST)
    second = None
    try:
        assert wait_for(lambda: ("Running", "Application") in minor_statuses(stub, job), 30)
        victim = pilot_of(stub, job)
        kill_hard(first)
        assert wait_for(lambda: stub.status(job) == "Waiting", 10)  # after Stalled
        second = start_pilot(stub, tmp_path / "p2", *BEAT, *FAST)
        assert second.wait(60) == 0
    finally:
        for pilot in (first, second):
            if pilot is not None and pilot.poll() is None:
                pilot.kill()
        wait_for(lambda: not marked_processes(mark), 5)  # the orphan ends by itself
        kill_marked(mark)
    history = minor_statuses(stub, job)
    assert ("Stalled", "Job stalled: pilot not running") in history
    assert ("Waiting", "Job Rescheduled") in history
    assert history[-1] == ("Done", "Execution Complete")
    info = stub.client.job(job)
    assert info["reschedules"] == 1 and info["pilot"] != victim
    assert done_counts(stub) == {job: 1}


def test_fifty_jobs_one_pilot_killed_each_done_exactly_once(
    fast_reaping_stub: Stub, tmp_path: Path
) -> None:
    stub, mark = fast_reaping_stub, new_mark("fifty")
    jobs = stub.submit(payload_jdl("stamps.py", mark, 0.3, extra="Parameters = 50;"))
    assert len(jobs) == 50
    idle = ["--idle-timeout", "4", "--disable-check", "cpu", "--check-timeout", "10"]
    cores = ["--cores", "2"]
    doomed = start_pilot(stub, tmp_path / "doomed", *BEAT, *cores, *idle)
    survivor = None
    try:
        assert wait_for(lambda: len(stub.client.pilots()) == 1, 30)
        (victim,) = [p["stamp"] for p in stub.client.pilots()]
        survivor = start_pilot(stub, tmp_path / "survivor", *BEAT, *cores, *idle)

        def victim_busy() -> bool:
            mine = [j for j in stub.client.jobs() if j["pilot"] == victim]
            return sum(j["status"] == "Done" for j in mine) >= 3 and any(
                j["status"] == "Running" for j in mine
            )

        assert wait_for(victim_busy, 60)
        kill_hard(doomed)
        assert survivor.wait(120) == 0, (tmp_path / "survivor" / "pilot.log").read_text()[-2000:]
    finally:
        for pilot in (doomed, survivor):
            if pilot is not None and pilot.poll() is None:
                pilot.kill()
        wait_for(lambda: not marked_processes(mark), 5)
        kill_marked(mark)
    assert done_counts(stub) == dict.fromkeys(jobs, 1)
    rescheduled = [j for j in jobs if ("Waiting", "Job Rescheduled") in minor_statuses(stub, j)]
    assert rescheduled  # the killed pilot's running job(s) came back and were done
    assert describe(marked_processes(mark)) == []
