"""Hostile payloads, all in one pilot run (8 slots): each is contained, each is reported
with its own minor status, and after the pilot exits none of their processes is left."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FAST, Stub, run_pilot, start_stub
from tests.payloads.support import describe, kill_marked, marked_processes, new_mark, payload_jdl

GRACE = 1.0
SCENARIOS = {
    "spawner": ("spawner.py", (200,), ""),
    "daemon": ("daemon.py", (), ""),
    "memhog": ("memhog.py", (300,), "MaxRAM = 100;"),
    "diskfill": ("diskfill.py", (200,), ""),
    "flood": ("flood.py", (30,), ""),
    "ignore_term": ("ignore_term.py", (), "WallTime = 2;"),
    "sleeper": ("sleeper.py", (), ""),
    "cpuburn": ("cpuburn.py", (30,), "CPUTime = 1;"),
}
PILOT_FLAGS = [
    "--cores", "8",
    "--sample-interval", "0.2",
    "--heartbeat-interval", "1",
    "--grace", str(GRACE),
    "--stalled-window", "3",
    "--max-stdout-mb", "1",
    "--max-job-disk-mb", "20",
    "--max-job-processes", "30",
]  # fmt: skip


@dataclass
class HostileRun:
    stub: Stub
    jobs: dict[str, int]
    returncode: int
    log: str
    left: list[str]
    tmp: Path

    def job(self, name: str) -> dict[str, object]:
        return self.stub.client.job(self.jobs[name])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRun]:
    tmp = tmp_path_factory.mktemp("hostile")
    stub = start_stub(tmp / "stub")
    mark = new_mark("hostile")
    try:
        jobs = {
            name: stub.submit(payload_jdl(script, mark, *args, extra=extra))[0]
            for name, (script, args, extra) in SCENARIOS.items()
        }
        done = run_pilot(["run", "--server", stub.url, *PILOT_FLAGS, *FAST], cwd=tmp)
        left = describe(marked_processes(mark))
        yield HostileRun(stub, jobs, done.returncode, done.stderr, left, tmp)
    finally:
        kill_marked(mark)
        stub.client.close()
        stub.server.stop()


def test_pilot_finished_and_left_no_process(hostile: HostileRun) -> None:
    assert hostile.returncode == 0, hostile.log[-3000:]
    assert hostile.left == []


@pytest.mark.parametrize(
    ("name", "status", "minor"),
    [
        ("spawner", "Failed", "Job exceeded process limit (30 processes)"),
        ("memhog", "Failed", "Job exceeded memory limit (MaxRAM 100 MB)"),
        ("diskfill", "Failed", "Job exceeded disk limit (job directory over 20 MB)"),
        ("flood", "Failed", "Job exceeded output limit (stdout truncated at 1 MB)"),
        ("ignore_term", "Failed", "Job exceeded wall clock time limit (WallTime 2 s)"),
        ("sleeper", "Failed", "Job stalled: CPU/wall below 5% for 3 s"),
        ("cpuburn", "Failed", "Job exceeded CPU time limit (CPUTime 1 normalised s)"),
        ("daemon", "Done", "Execution Complete"),
    ],
)
def test_each_is_reported_with_its_own_minor_status(
    hostile: HostileRun, name: str, status: str, minor: str
) -> None:
    job = hostile.job(name)
    assert (job["status"], job["minor_status"]) == (status, minor), hostile.log[-3000:]


def test_daemon_was_found_and_killed(hostile: HostileRun) -> None:
    assert "1 leftover process(es) killed" in str(hostile.job("daemon")["application_status"])
    out = hostile.tmp / "daemon-out"
    hostile.stub.client.get_output(hostile.jobs["daemon"], out)
    assert (out / "out").read_text() == "daemon started\n"


def test_flood_output_is_capped_and_noted(hostile: HostileRun) -> None:
    assert "stdout truncated at 1 MB" in str(hostile.job("flood")["application_status"])
    out = hostile.tmp / "flood-out"
    hostile.stub.client.get_output(hostile.jobs["flood"], out)
    data = (out / "out").read_bytes()
    assert (1 << 20) <= len(data) <= (1 << 20) + 100
    assert data.endswith(b"[pilot-agent: output truncated here, limit reached]\n")


def test_sigterm_ignorer_needed_sigkill_after_grace(hostile: HostileRun) -> None:
    timing = hostile.job("ignore_term")["timing"]
    assert isinstance(timing, dict)
    assert timing["payload"] >= 2 + GRACE  # it outlived SIGTERM by the whole grace
    job_id = hostile.jobs["ignore_term"]
    assert re.search(rf"job {job_id}: payload ended \(exit None, signal 9", hostile.log)


def test_heartbeats_carried_usage(hostile: HostileRun) -> None:
    beat = hostile.job("memhog")["heartbeat"] or hostile.job("cpuburn")["heartbeat"]
    assert isinstance(beat, dict)
    assert {"CPUConsumed", "MemoryUsed", "Vsize", "WallClockTime", "LoadAverage"} <= set(beat)
    assert {"AvailableDiskSpace"} <= set(beat)
