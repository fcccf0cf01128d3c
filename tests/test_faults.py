"""Real pilots and a real stub with a fault-injecting proxy between them (testbed/faultproxy.py):
connection resets, a lost match reply, a 60 s blackout, a stub restart, kill -9 of a pilot.

Each test asserts from the stub's records and from the execution log the payloads write:
every job Done exactly once, executed exactly once, its output retrievable, nothing left
Matched/Running, and no ERROR line in the pilots' logs."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_stub.server import StubServer
from testbed.faultcheck import RECORDER, error_lines, executions, judge, recorder_jdl
from testbed.faultproxy import FaultProxy, Faults
from tests.conftest import REPO, Stub, start_stub
from tests.payloads.support import (
    PYTHON,
    SYSTEM_PYTHON,
    describe,
    kill_marked,
    marked_processes,
    minor_statuses,
    new_mark,
    nobody_command,
    nobody_dir,
    pilot_process,
    pwd_nobody,
    start_pilot,
    wait_for,
)
from tests.test_isolation import needs_bwrap

QUICK = ["--disable-check", "cpu", "--check-timeout", "10"]


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Stub, FaultProxy]]:
    stub = start_stub(tmp_path / "stub")
    host, port = stub.server.httpd.server_address[:2]
    proxy = FaultProxy((str(host), int(port)), max_seconds=600).start()
    yield stub, proxy
    proxy.stop()
    stub.client.close()
    stub.server.stop()


def through(stub: Stub, proxy: FaultProxy) -> Stub:
    """The stub as pilots see it: behind the proxy."""
    return dataclasses.replace(stub, url=proxy.url)


def finish(pilots: list[subprocess.Popen[str]], timeout: float) -> list[int | None]:
    codes: list[int | None] = []
    deadline = time.monotonic() + timeout
    for pilot in pilots:
        try:
            codes.append(pilot.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pilot.kill()
            pilot.wait(10)
            codes.append(None)
    return codes


def logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("p*/pilot.log")))


def all_running(stub: Stub, jobs: list[int]) -> bool:
    return all(("Running", "Application") in minor_statuses(stub, j) for j in jobs)


def test_ten_percent_resets_and_delays(faulty: tuple[Stub, FaultProxy], tmp_path: Path) -> None:
    stub, proxy = faulty
    proxy.set_faults(Faults(reset_fraction=0.1, reset_after_max=3000, delay=(0.0, 0.03), seed=7))
    log = tmp_path / "executions.log"
    jobs = stub.submit(recorder_jdl(log, 0.2, extra="Parameters = 16;"))
    seen = through(stub, proxy)
    pilots = [
        start_pilot(seen, tmp_path / f"p{i}", "--cores", "2", "--idle-timeout", "8", *QUICK)
        for i in range(2)
    ]
    codes = finish(pilots, 150)
    verdict = judge(stub.client, stub.server.settings.db, jobs, log)
    assert proxy.resets > 0  # the faults happened
    assert verdict.perfect, (verdict, logs(tmp_path)[-3000:])
    assert codes == [0, 0], logs(tmp_path)[-3000:]
    assert error_lines(logs(tmp_path)) == []


def test_lost_match_reply_strands_no_job(faulty: tuple[Stub, FaultProxy], tmp_path: Path) -> None:
    stub, proxy = faulty
    log = tmp_path / "executions.log"
    jobs = stub.submit(recorder_jdl(log, 0.1, extra="Parameters = 2;"))
    proxy.drop_replies(b"POST /api/jobs/match", 1)
    pilot = start_pilot(through(stub, proxy), tmp_path / "p0", "--idle-timeout", "2", *QUICK)
    assert finish([pilot], 60) == [0], logs(tmp_path)[-3000:]
    assert proxy.lost_replies == 1
    verdict = judge(stub.client, stub.server.settings.db, jobs, log)
    assert verdict.perfect, verdict
    # the first job was claimed by the request whose reply was lost, and still ran first
    assert stub.client.job(jobs[0])["reschedules"] == 0
    assert error_lines(logs(tmp_path)) == []


@pytest.mark.slow
def test_sixty_second_blackout_while_jobs_run_and_finish(
    faulty: tuple[Stub, FaultProxy], tmp_path: Path
) -> None:
    """Default settings but a short idle timeout: the jobs end during the blackout; their
    outputs and final statuses arrive after it, nothing runs twice, the pilot exits 0."""
    stub, proxy = faulty
    log = tmp_path / "executions.log"
    jobs = stub.submit(recorder_jdl(log, 8, extra="Parameters = 3;"))
    pilot = start_pilot(
        through(stub, proxy), tmp_path / "p0", "--cores", "3", "--idle-timeout", "5", *QUICK
    )
    try:
        assert wait_for(lambda: all_running(stub, jobs), 60)
        proxy.blackout(True)
        assert wait_for(lambda: sum(executions(log).values()) == 3, 20)
        time.sleep(60)
        proxy.blackout(False)
        assert finish([pilot], 60) == [0], logs(tmp_path)[-3000:]
    finally:
        if pilot.poll() is None:
            pilot.kill()
    assert proxy.refused > 0  # the pilot did try during the blackout
    verdict = judge(stub.client, stub.server.settings.db, jobs, log)
    assert verdict.perfect, (verdict, logs(tmp_path)[-3000:])
    assert error_lines(logs(tmp_path)) == []
    for job in jobs:
        history = minor_statuses(stub, job)
        assert ("Completing", "Uploading Output Sandbox") in history
        assert history[-1] == ("Done", "Execution Complete")


def test_stub_restart_mid_run(faulty: tuple[Stub, FaultProxy], tmp_path: Path) -> None:
    """The stub stops while jobs run and starts again on the same database (elsewhere:
    the proxy follows it); the pilot carries on, nothing is lost or run twice."""
    stub, proxy = faulty
    log = tmp_path / "executions.log"
    jobs = stub.submit(recorder_jdl(log, 3, extra="Parameters = 4;"))
    pilot = start_pilot(
        through(stub, proxy), tmp_path / "p0", "--cores", "2", "--idle-timeout", "8", *QUICK
    )
    try:
        assert wait_for(lambda: all_running(stub, jobs[:2]), 60)
        stub.server.stop()  # down: the proxy answers every connection with a reset
        time.sleep(6)  # the first two jobs end meanwhile
        stub.server = StubServer(stub.server.settings)
        stub.server.start()
        host, port = stub.server.httpd.server_address[:2]
        proxy.retarget((str(host), int(port)))
        stub.client.close()
        stub.client = type(stub.client)(stub.server.url)
        stub.url = stub.server.url
        assert finish([pilot], 90) == [0], logs(tmp_path)[-3000:]
    finally:
        if pilot.poll() is None:
            pilot.kill()
    verdict = judge(stub.client, stub.server.settings.db, jobs, log)
    assert verdict.perfect, (verdict, logs(tmp_path)[-3000:])
    assert error_lines(logs(tmp_path)) == []


def test_repeated_updates_record_once_and_final_repeat_succeeds(stub: Stub) -> None:
    """The stub's side of retries: the same update twice is one history row; a final
    status repeated after its token was revoked succeeds; anything new with that token
    does not."""
    import httpx

    (job,) = stub.submit('Executable = "/bin/true";')
    body = {"pilot": "p1", "resources": {}, "request_id": "r" * 32}
    now = time.time()
    with httpx.Client(base_url=stub.url) as http:
        first = http.post("/api/jobs/match", json=body).json()
        again = http.post("/api/jobs/match", json=body).json()  # the first reply was "lost"
        assert again["job_id"] == first["job_id"] == job
        assert (
            http.post("/api/jobs/match", json={**body, "request_id": "s" * 32}).status_code == 204
        )
        assert again["token"] == first["token"]  # the same answer: the pilot holds one token
        token = {"X-Job-Token": again["token"]}
        running = {str(job): {f"{now + 1}": {"Status": "Running", "MinorStatus": "Application"}}}
        stranger = {"X-Job-Token": "not-the-token"}
        assert http.patch("/api/jobs/status", json=running, headers=stranger).status_code == 403
        for _ in range(2):
            assert http.patch("/api/jobs/status", json=running, headers=token).status_code == 200
        final = {str(job): {f"{now + 2}": {"Status": "Done", "MinorStatus": "Execution Complete"}}}
        for _ in range(2):
            answer = http.patch("/api/jobs/status", json=final, headers=token)
            assert answer.status_code == 200, answer.text
        late = {str(job): {f"{now + 3}": {"Status": "Failed", "MinorStatus": "late"}}}
        assert http.patch("/api/jobs/status", json=late, headers=token).status_code == 403
        beat = http.patch("/api/jobs/heartbeat", json={str(job): {}}, headers=token)
        assert beat.status_code == 403
        # a replay once the job has moved on is refused, not answered with a new token
        assert http.post("/api/jobs/match", json=body).status_code == 409
    history = minor_statuses(stub, job)
    assert history.count(("Running", "Application")) == 1
    assert history.count(("Done", "Execution Complete")) == 1
    assert history[-1] == ("Done", "Execution Complete")


def test_status_nonsense_times_are_refused_not_a_server_error(stub: Stub) -> None:
    """Two spellings of one time with different updates, NaN or infinite times: 200 or
    400, never a 500 (a tie compared the updates; NaN went to the database as NULL)."""
    import httpx

    (job,) = stub.submit('Executable = "/bin/true";')
    body = {"pilot": "p1", "resources": {}, "request_id": "r" * 32}
    with httpx.Client(base_url=stub.url) as http:
        token = {"X-Job-Token": http.post("/api/jobs/match", json=body).json()["token"]}
        tie = {str(job): {"5": {"Status": "Running"}, "5.0": {"MinorStatus": "Application"}}}
        assert http.patch("/api/jobs/status", json=tie, headers=token).status_code == 200
        for stamp in ("nan", "inf", "-inf"):
            bad = {str(job): {stamp: {"MinorStatus": "x"}}}
            answer = http.patch("/api/jobs/status", json=bad, headers=token)
            assert answer.status_code == 400, answer.text
            assert "bad timestamp" in answer.text
    assert stub.status(job) == "Running"


def test_forgetting_old_match_requests_is_no_table_scan(stub: Stub) -> None:
    """Every claim forgets request ids older than a week: on an index, not by reading a
    week of requests (300000 rows: 17 ms inside the matching transaction)."""
    import sqlite3

    from server_stub.store import MATCH_REQUEST_KEEP_S

    with sqlite3.connect(stub.server.settings.db) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM match_requests WHERE created < ?",
            (time.time() - MATCH_REQUEST_KEEP_S,),
        ).fetchall()
    assert any("USING INDEX match_requests_created" in str(row) for row in plan), plan


def test_a_lost_match_reply_whose_job_moved_on_is_no_job(stub: Stub) -> None:
    """The job claimed for a match whose reply was lost is deleted (or rescheduled after a
    long outage) before the pilot asks again: the stub refuses the replay (409); the
    pilot takes that as "no job", not as a reason to exit, and asks anew."""
    import httpx

    from pilot.backends.stub import HttpClient, StubBackend

    first, second = (
        stub.submit('Executable = "/bin/true";'),
        stub.submit('Executable = "/bin/true";'),
    )
    backend = StubBackend(HttpClient(stub.url))
    backend.stamp = "p1"
    body = {"pilot": "p1", "resources": {}, "request_id": "r" * 32}
    with httpx.Client(base_url=stub.url) as http:  # the request whose reply is lost
        assert http.post("/api/jobs/match", json=body).json()["job_id"] == first[0]
    stub.client.delete(first[0])
    backend.pending_request = "r" * 32  # as the pilot keeps it after a lost reply
    try:
        assert backend.match({}) is None
        job = backend.match({})
        assert job is not None and job.job_id == str(second[0])
    finally:
        backend.close()


def test_recovered_reports_of_a_job_that_moved_on_are_dropped_quietly(
    stub: Stub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pilot died with a journal; meanwhile its job was deleted (or rescheduled as
    stalled): the stub no longer takes its token. The next pilot's recovery sends the
    journal once, takes the 403 as final, removes the journal and logs no error."""
    import json
    import logging

    from pilot.backends.outbox import Outbox, RetryBudget
    from pilot.backends.stub import HttpClient, StubBackend

    (job,) = stub.submit('Executable = "/bin/true";')
    backend = StubBackend(HttpClient(stub.url))
    backend.stamp = "p1"
    try:
        matched = backend.match({})
        assert matched is not None and matched.job_id == str(job)
        stub.client.delete(job)
        box = tmp_path / "outbox"
        box.mkdir()
        done = {"status": "Done", "minor": "Execution Complete", "timestamp": time.time()}
        (box / f"job-{job}.jsonl").write_text(
            json.dumps({"job": str(job), "token": matched.token})
            + "\n"
            + json.dumps({"seq": 0, "kind": "status", **done})
            + "\n"
        )
        outbox = Outbox(backend, box, RetryBudget(retry_for=5.0))
        with caplog.at_level(logging.INFO, logger="pilot.backends.outbox"):
            assert outbox.recover() == 1
            assert outbox.drain(30) == 0
    finally:
        backend.close()
    assert list(box.iterdir()) == []
    assert stub.status(job) == "Deleted"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("refused" in r.getMessage() for r in caplog.records)


def test_output_upload_that_fails_for_good_fails_the_job_and_keeps_its_directory(
    faulty: tuple[Stub, FaultProxy], tmp_path: Path
) -> None:
    stub, proxy = faulty
    log = tmp_path / "executions.log"
    (job,) = stub.submit(recorder_jdl(log, 0.1))
    proxy.drop_replies(b"PUT /api/sandboxes/", 1000)  # every upload's answer is lost
    pilot = start_pilot(
        through(stub, proxy), tmp_path / "p0", "--retry-for", "3", "--idle-timeout", "1", *QUICK
    )
    assert finish([pilot], 60) == [0], logs(tmp_path)[-3000:]
    info = stub.client.job(job)
    assert info["status"] == "Failed"
    assert info["minor_status"].startswith("Output sandbox upload failed: ")
    assert info["output_sandbox"] is None
    kept = tmp_path / "p0" / "w" / f"job-{job}"
    assert (kept / "out").read_text() == f"job {job} done\n"
    errors = error_lines(logs(tmp_path))
    assert len(errors) == 1 and f"job directory kept: {kept}" in errors[0], errors
    assert "Done" not in [s for s, _ in minor_statuses(stub, job)]


def test_undelivered_reports_exit_23_and_the_next_pilot_sends_them(
    faulty: tuple[Stub, FaultProxy], tmp_path: Path
) -> None:
    """Every status reply is lost: the stub records the updates, the pilot cannot know,
    gives up after --retry-for, exits 23 and leaves its journal; a pilot started later on
    the same work directory sends it again: repeats, recorded once, accepted although
    the final status revoked the job token."""
    stub, proxy = faulty
    log = tmp_path / "executions.log"
    (job,) = stub.submit(recorder_jdl(log, 0.2))
    proxy.drop_replies(b"PATCH /api/jobs/status", 10**6)
    seen = through(stub, proxy)
    first = start_pilot(seen, tmp_path / "p0", "--retry-for", "0", "--idle-timeout", "1", *QUICK)
    code = finish([first], 60)
    journal = tmp_path / "p0" / "w" / "outbox" / f"job-{job}.jsonl"
    assert code == [23], logs(tmp_path)[-3000:]
    assert journal.exists()
    assert "job report(s) not delivered" in (tmp_path / "p0" / "pilot.log").read_text()
    assert stub.status(job) == "Done"  # it did arrive; only the replies were lost
    proxy.keep_replies()
    # a later pilot on the same work directory (p0/w)
    again = start_pilot(seen, tmp_path / "p0", "--idle-timeout", "1", *QUICK)
    assert finish([again], 60) == [0], (tmp_path / "p0" / "pilot.log").read_text()[-3000:]
    assert not journal.exists()
    verdict = judge(stub.client, stub.server.settings.db, [job], log)
    assert verdict.perfect, verdict
    history = minor_statuses(stub, job)
    assert history.count(("Done", "Execution Complete")) == 1
    assert history.count(("Running", "Application")) == 1


@pytest.mark.slow
def test_kill_acts_within_thirty_seconds_by_default(stub: Stub, tmp_path: Path) -> None:
    """Default --heartbeat-interval (300 s) and --command-interval (20 s)."""
    log = tmp_path / "executions.log"
    (job,) = stub.submit(recorder_jdl(log, 120))
    pilot = start_pilot(stub, tmp_path / "p0", "--idle-timeout", "1", *QUICK)
    try:
        assert wait_for(lambda: all_running(stub, [job]), 60)
        asked = time.monotonic()
        stub.client.kill(job)
        assert wait_for(lambda: stub.status(job) == "Killed", 40)
        took = time.monotonic() - asked
        assert finish([pilot], 30) == [0]
    finally:
        if pilot.poll() is None:
            pilot.kill()
    assert took < 30, took  # a behaviour bound (the default poll is 20 s), not a speed goal
    assert minor_statuses(stub, job)[-1] == ("Killed", "Killed by user")


# -- kill -9 of the pilot: no payload process survives it --------------------------------


def _kill9_leaves_no_payload(
    stub: Stub,
    work: Path,
    log: Path,
    argv0: list[str],
    env: dict[str, str] | None,
    *extra: str,
) -> None:
    mark = new_mark("kill9")
    python = SYSTEM_PYTHON if argv0 or extra else PYTHON
    # the recorder travels in the input sandbox: an isolated payload sees no repository
    # that lives under /tmp (a clone there), the sandbox's /tmp being its own
    sandbox = 'InputSandbox = {"recorder.py"};'
    jdl = recorder_jdl(log, 120, python=python, script="recorder.py", extra=sandbox)
    jdl = jdl.replace(f"rec {log} 120", f"{mark} {log} 120 daemon")
    (job,) = stub.submit(jdl, files={"recorder.py": RECORDER.read_text()})
    args = ["--idle-timeout", "1", *QUICK, *extra]
    launcher = start_pilot(stub, work, *args, env=env, argv0=argv0)
    try:
        assert wait_for(lambda: all_running(stub, [job]), 60), (work / "pilot.log").read_text()
        # main, its child, the daemon (and bwrap's processes when isolated)
        assert wait_for(lambda: len(marked_processes(mark)) >= 3, 30), marked_processes(mark)
        time.sleep(0.5)
        os.kill(pilot_process(launcher), signal.SIGKILL)
        launcher.wait(10)
        gone = wait_for(lambda: not marked_processes(mark), 5)
        report = work / "w" / "guardian.log"
        # written after its last round
        wait_for(lambda: report.exists() and "killed" in report.read_text(), 5)
        said = report.read_text() if report.exists() else "(no guardian.log)"
        assert gone, (describe(marked_processes(mark)), said)
        assert "process(es) of 1 job(s) killed" in said
    finally:
        if launcher.poll() is None:
            launcher.kill()
        kill_marked(mark)


def test_kill9_of_the_pilot_leaves_no_payload_process(stub: Stub, tmp_path: Path) -> None:
    _kill9_leaves_no_payload(stub, tmp_path / "p0", tmp_path / "executions.log", [], None)


def test_kill9_of_an_unprivileged_pilot_leaves_no_payload_process(stub: Stub) -> None:
    """As user nobody the guardian reads only its own user's /proc entries: enough."""
    argv0, env = nobody_command()
    work = nobody_dir()
    try:
        log = work / "executions.log"
        log.touch()
        os.chown(log, pwd_nobody(), pwd_nobody())
        _kill9_leaves_no_payload(stub, work, log, argv0, env)
        assert (work / "w").stat().st_uid == pwd_nobody()  # the pilot really was nobody
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_kill9_of_a_pilot_with_bubblewrap_leaves_no_payload_process(
    stub: Stub, tmp_path: Path
) -> None:
    """With --isolation bwrap the payload's PID namespace dies with bwrap as well."""
    needs_bwrap()
    # the sandbox's /tmp is private: the payload writes its log in its job directory
    _kill9_leaves_no_payload(
        stub, tmp_path / "p0", Path("executions.log"), [], None, "--isolation", "bwrap"
    )


def test_the_guardian_spares_a_process_that_took_a_job_process_number() -> None:
    """After the pilot's death the guardian kills a job's processes by (pid, start time),
    so a process that got a number the job used is spared, and a job whose end the pilot
    told it is left alone; the same process under its own key is killed."""
    from pilot.job import guardian, proctable

    bystander = subprocess.Popen(["sleep", "30"])
    ended = subprocess.Popen(["true"], start_new_session=True)
    ended.wait()  # a session of the job that is over: nothing in it now
    try:
        start = proctable.scan()[bystander.pid].start
        jobs: dict[str, int] = {}
        seen: dict[str, set[tuple[int, int]]] = {}
        for line in ("+ a 1", "p a 1 1", "- a", f"+ b {ended.pid}", f"p b {bystander.pid} 1"):
            guardian.apply_line(line.split(), jobs, seen)
        assert jobs == {"b": ended.pid}  # job a ended: forgotten
        assert guardian.end_jobs(jobs, seen) == 0  # the number, not the process
        assert bystander.poll() is None
        seen["b"].add((bystander.pid, start))
        assert guardian.end_jobs(jobs, seen) == 1
        assert bystander.wait(5) == -signal.SIGKILL
    finally:
        bystander.kill()
        bystander.wait()


GUARDIAN_BESIDE_A_THREAD = """
import sys, threading, time
from pilot.job import guardian
name = sys.argv[1]
thread = threading.Thread(target=time.sleep, args=(float(sys.argv[2]),), name=name)
thread.daemon = True
thread.start()
began = time.monotonic()
pid = guardian.start(None)
print(pid is not None, thread.is_alive(), round(time.monotonic() - began, 2))
"""


@pytest.mark.parametrize(
    ("name", "sleep", "forked", "beside"),
    [
        ("fork-safe:unpack lib.so", "5", True, True),  # the binary's unpacking thread
        ("worker", "0.3", True, False),  # waited for: it ends in time
        ("worker", "5", False, True),  # still running after THREADS_WAIT_S: no fork
    ],
)
def test_the_guardian_forks_beside_fork_safe_threads_only(
    name: str, sleep: str, forked: bool, beside: bool
) -> None:
    """A thread named FORK_SAFE (the one-file binary's early unpacking of a library, see
    build/rth_lazy_native.py) does not hold the guardian up; any other is waited for,
    and one that outlives the wait means no guardian rather than an unsafe fork."""
    from pilot.job import guardian

    assert name.startswith(guardian.FORK_SAFE) == (name != "worker")
    hook = (REPO / "build" / "rth_lazy_native.py").read_text()
    assert f'name = "{guardian.FORK_SAFE}unpack ' in hook  # the hook names its thread so
    done = subprocess.run(
        [sys.executable, "-c", GUARDIAN_BESIDE_A_THREAD, name, sleep],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    did_fork, alive, took = done.stdout.split()
    assert (did_fork, alive) == (str(forked), str(beside)), done.stdout
    if name != "worker":
        assert float(took) < 0.5, done.stdout  # not waited for (it sleeps 5 s)


def _history_count(stub: Stub, job: int, status: str, minor: str) -> int:
    return minor_statuses(stub, job).count((status, minor))


def _matched(stub: Stub, job: int) -> None:
    """Claim ``job`` as a pilot would (it becomes Matched: a kill waits for the pilot)."""
    import httpx

    body = {"pilot": "p1", "resources": {}, "request_id": "m" * 32}
    with httpx.Client(base_url=stub.url) as http:
        assert http.post("/api/jobs/match", json=body).json()["job_id"] == job


@pytest.mark.parametrize(
    ("command", "before", "said", "row"),
    [
        ("kill", "Waiting", "Killed", ("Killed", "Killed by user")),
        ("kill", "Matched", "Kill requested", ("Matched", "Kill requested")),
        ("delete", "Waiting", "Deleted", ("Deleted", "Deleted by user")),
        ("reschedule", "Killed", "Rescheduled", ("Waiting", "Job Rescheduled")),
    ],
)
def test_a_user_command_whose_reply_is_lost_acts_once_and_succeeds(
    faulty: tuple[Stub, FaultProxy], command: str, before: str, said: str, row: tuple[str, str]
) -> None:
    """pilot-stub kill/delete/reschedule through the proxy, which loses the stub's reply
    to the first try: the client's retry carries the same request id and gets the first
    answer; the command exits 0, says what it did once, the history has one row of it.
    The same command given again (a new request) is refused as before."""
    from tests.test_stub_cli import cli

    stub, proxy = faulty
    (job,) = stub.submit('Executable = "/bin/true";')
    if before == "Matched":
        _matched(stub, job)
    elif before == "Killed":
        stub.client.kill(job)
    assert stub.status(job) == before
    method = "DELETE" if command == "delete" else "POST"
    route = f"/api/jobs/{job}" + ("" if command == "delete" else f"/{command}")
    proxy.drop_replies(f"{method} {route} ".encode(), 1)
    done = cli("--server", proxy.url, command, str(job))
    assert proxy.lost_replies == 1  # the first try did land and its reply was lost
    assert (done.returncode, done.stdout, done.stderr) == (0, f"job {job}: {said}\n", "")
    assert _history_count(stub, job, *row) == 1
    if command == "reschedule":
        assert stub.client.job(job)["reschedules"] == 1
    if command != "reschedule" and before == "Waiting":
        again = cli("--server", proxy.url, command, str(job))  # a new command, not a retry
        assert again.returncode == 2
        assert again.stderr.strip() == f"pilot-stub: job {job}: is already {row[0]}"
        assert _history_count(stub, job, *row) == 1


def test_a_user_request_id_is_one_action_on_one_job(stub: Stub) -> None:
    """The stub answers a repeated X-Request-Id with its first answer, for that action on
    that job only; without the header (the monitor's API callers) every call acts anew;
    a malformed id is refused with a line saying what to fix."""
    import httpx

    first, second = (stub.submit('Executable = "/bin/true";')[0] for _ in range(2))
    rid = {"X-Request-Id": "q" * 16}
    with httpx.Client(base_url=stub.url) as http:
        for _ in range(2):
            answer = http.post(f"/api/jobs/{first}/kill", headers=rid)
            assert answer.json() == {"job_id": first, "result": "Killed"}
        # the same id for another job, or another action, is another request
        assert http.post(f"/api/jobs/{second}/kill", headers=rid).json()["result"] == "Killed"
        back = http.post(f"/api/jobs/{first}/reschedule", headers=rid)
        assert back.json()["result"] == "Rescheduled"
        assert http.post(f"/api/jobs/{first}/reschedule", headers=rid).status_code == 200
        assert stub.client.job(first)["reschedules"] == 1
        plain = http.post(f"/api/jobs/{second}/kill")
        assert plain.status_code == 409 and "already Killed" in plain.text
        short = http.post(f"/api/jobs/{first}/kill", headers={"X-Request-Id": "short"})
        assert short.status_code == 400
        assert short.json()["detail"] == "X-Request-Id must be 8 to 128 characters"
    assert minor_statuses(stub, first).count(("Killed", "Killed by user")) == 1


def test_forgetting_old_user_requests_is_no_table_scan(stub: Stub) -> None:
    """Every user request remembered forgets those older than a week, on an index."""
    import sqlite3

    from server_stub.store import USER_REQUEST_KEEP_S

    (job,) = stub.submit('Executable = "/bin/true";')
    with sqlite3.connect(stub.server.settings.db) as db:
        db.execute("INSERT INTO user_requests VALUES ('old', 'Killed', 0)")
    stub.client.kill(job)  # remembers its own request and forgets the old one
    with sqlite3.connect(stub.server.settings.db) as db:
        kept = [r[0] for r in db.execute("SELECT result FROM user_requests")]
        plan = db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM user_requests WHERE created < ?",
            (time.time() - USER_REQUEST_KEEP_S,),
        ).fetchall()
    assert kept == ["Killed"]
    assert any("USING INDEX user_requests_created" in str(row) for row in plan), plan
