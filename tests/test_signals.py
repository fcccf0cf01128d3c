"""Signals to the pilot mid-job, the drain file, and the kill path as an ordinary user."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pilot.agent import Stop
from tests.conftest import FAST, Stub
from tests.payloads.support import (
    SYSTEM_PYTHON,
    describe,
    kill_marked,
    marked_processes,
    minor_statuses,
    new_mark,
    nobody_command,
    nobody_dir,
    payload_jdl,
    pilot_process,
    pwd_nobody,
    start_pilot,
    wait_for,
)

FAST_WATCH = ["--sample-interval", "0.2", "--heartbeat-interval", "1"]


def running(stub: Stub, job: int) -> bool:
    return ("Running", "Application") in minor_statuses(stub, job)


def stop_mid_job(
    stub: Stub,
    work: Path,
    sig: str,
    grace: float,
    argv0: list[str],
    env: dict[str, str] | None,
    send: Callable[[int, str], None] | None = None,
) -> tuple[int, float, int, str]:
    """Start a pilot on a SIGTERM-ignoring job, signal it mid-job; (job, seconds, rc, mark).

    ``send(pilot_pid, mark)`` replaces the one signal to the pilot."""
    mark = new_mark("signal")
    python = SYSTEM_PYTHON if argv0 else None
    jdl = payload_jdl("ignore_term.py", mark, **({"python": python} if python else {}))
    (job,) = stub.submit(jdl)
    args = ["--grace", str(grace), *FAST_WATCH, *FAST]
    pilot = start_pilot(stub, work, *args, env=env, argv0=argv0)
    try:
        assert wait_for(lambda: running(stub, job), 30), (work / "pilot.log").read_text()
        assert wait_for(lambda: len(marked_processes(mark)) == 2, 10)  # it forked: both ignore
        start = time.monotonic()
        if send is None:
            os.kill(pilot_process(pilot), getattr(signal, sig))
        else:
            send(pilot_process(pilot), mark)
        code = pilot.wait(grace + 30)
        return job, time.monotonic() - start, code, mark
    finally:
        if pilot.poll() is None:
            pilot.kill()
        kill_marked(mark)


SIGNALS = [("SIGTERM", 2.0), ("SIGINT", 1.0), ("SIGUSR1", 1.0), ("SIGUSR2", 1.0), ("SIGXCPU", 1.0)]


@pytest.mark.parametrize(("sig", "grace"), SIGNALS)
def test_signal_kills_jobs_uploads_and_exits_60(
    stub: Stub, tmp_path: Path, sig: str, grace: float
) -> None:
    job, seconds, code, mark = stop_mid_job(stub, tmp_path, sig, grace, [], None)
    log = (tmp_path / "pilot.log").read_text()
    assert code == 60, log[-2000:]
    assert seconds < grace + 5
    assert seconds >= grace  # the payload ignored SIGTERM: only SIGKILL after the grace ended it
    info = stub.client.job(job)
    assert (info["status"], info["minor_status"]) == ("Killed", f"pilot received {sig}")
    out = tmp_path / "out"
    stub.client.get_output(job, out)
    assert (out / "out").read_text() == "ignoring SIGTERM\n" * 2
    (stamp,) = [p["stamp"] for p in stub.client.pilots()]
    assert f"received {sig}" in stub.client.pilot_log(stamp)
    assert describe(marked_processes(mark)) == []


def test_a_stop_is_set_once_and_keeps_its_first_reason() -> None:
    stop = Stop()
    assert stop.set("pilot received SIGUSR2") is True
    assert stop.is_set() and stop.wake.is_set()
    stop.wake.clear()
    assert stop.set("pilot received SIGUSR2") is False
    assert stop.set("pilot received SIGTERM") is False
    assert stop.reason == "pilot received SIGUSR2"
    assert not stop.wake.is_set()  # nothing new for the loop to look at


def test_repeated_signals_to_every_process_are_handled_once(stub: Stub, tmp_path: Path) -> None:
    """What Grid Engine does on qdel of a -notify job: SIGUSR2 to the job's process group
    and then to every process of the job (the payload's too, in its own session), so each
    gets it twice within milliseconds; a later SIGTERM changes nothing either."""

    def grid_engine_notify(pilot_pid: int, mark: str) -> None:
        payload = [p.pid for p in marked_processes(mark)]
        for _ in range(2):
            os.kill(pilot_pid, signal.SIGUSR2)
            for pid in payload:  # one the first round killed may be reaped by now
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR2)
        os.kill(pilot_pid, signal.SIGTERM)

    grace = 20.0  # the payload dies of SIGUSR2 at once: the pilot must not wait for this
    job, seconds, code, mark = stop_mid_job(
        stub, tmp_path, "SIGUSR2", grace, [], None, grid_engine_notify
    )
    log = (tmp_path / "pilot.log").read_text()
    assert code == 60, log[-2000:]
    assert seconds < grace / 2, log[-2000:]
    info = stub.client.job(job)
    assert (info["status"], info["minor_status"]) == ("Killed", "pilot received SIGUSR2"), info
    stub.client.get_output(job, tmp_path / "out")
    assert (tmp_path / "out" / "out").read_text() == "ignoring SIGTERM\n" * 2
    assert log.count("received SIGUSR2: stopping") == 1, log[-3000:]
    assert "received SIGTERM: stopping" not in log
    (stamp,) = [p["stamp"] for p in stub.client.pilots()]
    assert stub.client.pilot_log(stamp).count("received SIGUSR2: stopping") == 1
    assert describe(marked_processes(mark)) == []


def test_drain_file_finishes_running_jobs_and_takes_no_more(stub: Stub, tmp_path: Path) -> None:
    mark = new_mark("drain")
    jobs = [stub.submit(payload_jdl("stamps.py", mark, 1.5))[0] for _ in range(3)]
    drain = tmp_path / "drain-now"
    pilot = start_pilot(stub, tmp_path, "--cores", "1", "--drain-file", str(drain), *FAST)
    try:
        assert wait_for(lambda: running(stub, jobs[0]), 30)
        drain.touch()
        assert pilot.wait(30) == 61
    finally:
        if pilot.poll() is None:
            pilot.kill()
        kill_marked(mark)
    assert [stub.status(j) for j in jobs] == ["Done", "Waiting", "Waiting"]


def test_kill_path_as_an_ordinary_user(stub: Stub) -> None:
    """As nobody (no root, no cgroup writes): SIGTERM mid-job, a SIGTERM-ignoring payload
    and its child are killed, the job is reported, nothing is left."""
    argv0, env = nobody_command()
    work = nobody_dir()
    try:
        job, seconds, code, mark = stop_mid_job(stub, work, "SIGTERM", 1.0, argv0, env)
        log = (work / "pilot.log").read_text()
        assert code == 60, log[-2000:]
        assert seconds < 1.0 + 5
        assert stub.client.job(job)["minor_status"] == "pilot received SIGTERM"
        assert describe(marked_processes(mark)) == []
        assert (work / "w").stat().st_uid == pwd_nobody()  # the pilot really was nobody
    finally:
        shutil.rmtree(work, ignore_errors=True)
