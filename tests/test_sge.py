"""The one-file pilot as the payload of a real Grid Engine job (see tests/sge/cluster.py).

One private single-node Grid Engine 8.1.9 per module, 2 slots, parallel environment
``smp``, queue ``notify`` 60 s. The binary is submitted by user ``nobody`` with
``qsub -notify -l h_rt=...`` (and ``-pe smp 2``), as a site's pilot factory would. It must
detect Grid Engine, its slots and its time left, unpack under the job's ``TMPDIR``, take
and complete the stub's jobs and exit when idle; on ``qdel`` (SIGUSR2 to every process of
the job, twice, then SIGKILL 60 s later) it must report its job ``Killed`` with the signal
as the reason, upload the job's output and its own log, and exit 60 well before the
SIGKILL; near its wall limit it must take no job it cannot finish and end the running one
itself before Grid Engine does. With ``CI=true`` a cluster that cannot start fails these
tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Stub
from tests.payloads.support import nobody_dir, wait_for
from tests.pidns import running_cluster
from tests.sge.cluster import NOTIFY, GridEngine, start_cluster
from tests.test_binary import ensure_binary

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

H_RT = 300  # seconds: the pilots' hard wall-clock limit (but in the wall-limit test)


@pytest.fixture(scope="module")
def pilot_binary() -> Path:
    return ensure_binary()


@pytest.fixture(scope="module")
def sge() -> Iterator[GridEngine]:
    with running_cluster("Grid Engine", start_cluster) as cluster:
        yield cluster
    shutil.rmtree(cluster.root, ignore_errors=True)


@dataclass
class Submission:
    folder: Path  # owned by nobody: the binary, the script, the pilot's output and work dir
    job_id: str = ""

    @property
    def output(self) -> str:
        try:
            return (self.folder / "pilot.out").read_text(errors="replace")
        except OSError:
            return "(no pilot.out)"


@pytest.fixture
def submission(pilot_binary: Path, tmp_path: Path) -> Iterator[Submission]:
    """A folder user nobody owns, with a copy of the binary; the pilot's output is kept in
    ``tmp_path`` afterwards (for the log scan)."""
    folder = nobody_dir()
    shutil.copy2(pilot_binary, folder / "pilot")
    (folder / "pilot").chmod(0o755)
    try:
        yield Submission(folder)
    finally:
        if (folder / "pilot.out").exists():
            shutil.copy(folder / "pilot.out", tmp_path / "sge-pilot.out")
        shutil.rmtree(folder, ignore_errors=True)


def submit_pilot(
    sge: GridEngine, sub: Submission, stub: Stub, *qsub_options: str, pilot: tuple[str, ...] = ()
) -> str:
    """``qsub -notify -l h_rt=...`` of a script whose only command is the pilot (exec: it
    is the job's process and gets Grid Engine's signals)."""
    args = [
        "run", "--server", stub.url, "--site", "SGE.Test.org",
        "--work-dir", str(sub.folder / "work"), "--idle-timeout", "2", "--check-timeout", "20",
        *pilot,
    ]  # fmt: skip
    script = sub.folder / "pilot.sh"
    script.write_text("#!/bin/sh\nexec " + " ".join([str(sub.folder / "pilot"), *args]) + "\n")
    script.chmod(0o755)
    options = ["-notify", "-N", "pilot", "-wd", str(sub.folder), "-j", "y"]
    options += ["-o", str(sub.folder / "pilot.out"), *qsub_options]
    if not any(o.startswith("h_rt=") for o in qsub_options):
        options += ["-l", f"h_rt={H_RT}"]
    sub.job_id = sge.qsub(script, *options)
    return sub.job_id


def registration(stub: Stub, job_id: str) -> dict[str, object]:
    for pilot in stub.client.pilots():
        if pilot.get("batch", {}).get("job_id") == job_id:
            return dict(pilot)
    raise AssertionError(
        f"no pilot registered for Grid Engine job {job_id}: {stub.client.pilots()}"
    )


def finished(sge: GridEngine, sub: Submission, timeout: float) -> dict[str, str]:
    try:
        sge.wait_gone(sub.job_id, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- pilot.out\n{sub.output[-3000:]}") from None
    return sge.accounting(sub.job_id)


def test_pilot_under_grid_engine_completes_jobs_and_exits_when_idle(
    sge: GridEngine, submission: Submission, stub: Stub, tmp_path: Path
) -> None:
    ids = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo job $JOBID\'"; CPUTime = 60;'
        ' StdOutput = "StdOut"; OutputSandbox = {"StdOut"}; Parameters = 2;'
    )
    # where the binary unpacked itself: a _MEI folder under the job's Grid Engine TMPDIR
    (unpacked,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'ls -d /tmp/*.all.q/_MEI*\'"; CPUTime = 60;'
        ' StdOutput = "StdOut"; OutputSandbox = {"StdOut"};'
    )
    # needs a day of CPU: cannot fit the 5-minute slot the pilot learns from Grid Engine
    (too_long,) = stub.submit('Executable = "/bin/true"; CPUTime = 86400;')
    job_id = submit_pilot(sge, submission, stub)
    acct = finished(sge, submission, timeout=120)
    out = submission.output
    assert (acct["failed"], acct["exit_status"]) == ("0", "0"), (acct, out[-3000:])
    assert acct["owner"] == "nobody"
    for job in ids:
        info = stub.client.job(job)
        assert (info["status"], info["minor_status"]) == ("Done", "Execution Complete"), info
        stub.client.get_output(job, tmp_path / "out" / str(job))
        assert (tmp_path / "out" / str(job) / "StdOut").read_text() == f"job {job}\n"
    stub.client.get_output(unpacked, tmp_path / "unpacked")
    listed = (tmp_path / "unpacked" / "StdOut").read_text().split()
    # (a folder left by an earlier, crashed run would be listed too: look for ours)
    assert any(path.startswith(f"/tmp/{job_id}.1.all.q/_MEI") for path in listed), listed
    assert stub.status(too_long) == "Waiting"
    batch = registration(stub, job_id)["batch"]
    assert isinstance(batch, dict)
    assert (batch["system"], batch["cores"]) == ("sge", 1)
    assert batch["sources"]["wall_time_left"] == "qstat -xml JAT_start_time + h_rt"
    # start + h_rt - now, as Grid Engine's accounting has the start (whole seconds, local
    # time) and the stub the registration's time (the slot is detected just before it)
    started = time.mktime(time.strptime(acct["start_time"], "%a %b %d %H:%M:%S %Y"))
    expected = started + H_RT - float(str(registration(stub, job_id)["registered"]))
    print(f"h_rt={H_RT}: the pilot found {batch['wall_time_left']:.1f} s left of {expected:.1f}")
    assert abs(batch["wall_time_left"] - expected) <= 3, (batch, acct["start_time"])
    assert batch["wall_time_left"] < H_RT, batch
    assert batch["extra"]["queue"] == "all.q"


def test_two_slot_pilot_runs_a_two_core_job(
    sge: GridEngine, submission: Submission, stub: Stub, tmp_path: Path
) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo $NUMBER_OF_PROCESSORS\'"; CPUTime = 60;'
        ' NumberOfProcessors = 2; StdOutput = "StdOut"; OutputSandbox = {"StdOut"};'
    )
    job_id = submit_pilot(sge, submission, stub, "-pe", "smp", "2")
    acct = finished(sge, submission, timeout=120)
    assert (acct["failed"], acct["exit_status"], acct["slots"]) == ("0", "0", "2"), acct
    info = stub.client.job(job)
    assert info["status"] == "Done", (info, submission.output[-3000:])
    stub.client.get_output(job, tmp_path / "out")
    assert (tmp_path / "out" / "StdOut").read_text() == "2\n"
    batch = registration(stub, job_id)["batch"]
    assert isinstance(batch, dict)
    assert (batch["cores"], batch["sources"]["cores"]) == (2, "NSLOTS")
    assert batch["extra"]["pe"] == "smp"


def test_qdel_of_a_notify_pilot_kills_the_payload_with_sigusr2_as_reason(
    sge: GridEngine, submission: Submission, stub: Stub, tmp_path: Path
) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo started; exec sleep 300\'";'
        ' CPUTime = 60; StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    job_id = submit_pilot(sge, submission, stub, pilot=("--grace", "5"))
    wait_for(lambda: stub.client.job(job)["minor_status"] == "Application", 90)
    assert stub.client.job(job)["minor_status"] == "Application", submission.output[-3000:]
    done = sge.command(["qdel", job_id], user="nobody")
    assert done.returncode == 0, done.stderr
    deleted = time.monotonic()
    acct = finished(sge, submission, timeout=NOTIFY + 30)
    gone = time.monotonic() - deleted
    print(f"qdel -> job gone after {gone:.1f} s (SIGKILL would come after {NOTIFY} s)")
    out = submission.output
    # the pilot ended by itself, with its signal code, well before the SIGKILL (60 s)
    assert acct["exit_status"] == "60", (acct, out[-3000:])
    assert gone < NOTIFY - 20, (gone, out[-3000:])
    info = stub.client.job(job)
    assert (info["status"], info["minor_status"]) == ("Killed", "pilot received SIGUSR2"), info
    names = stub.client.get_output(job, tmp_path / "out")
    assert "out.txt" in names
    assert (tmp_path / "out" / "out.txt").read_text() == "started\n"
    stamp = str(registration(stub, job_id)["stamp"])
    pilot_log = stub.client.pilot_log(stamp)
    assert pilot_log.count("received SIGUSR2: stopping") == 1, pilot_log[-3000:]


def test_pilot_near_its_wall_limit_takes_no_job_it_cannot_finish(
    sge: GridEngine, submission: Submission, stub: Stub, tmp_path: Path
) -> None:
    """h_rt=100, --grace 5: the running job is ended 65 s before the slot's end (grace and
    stage-out), its output uploaded; the job needing a day is never taken; the pilot exits
    by itself before Grid Engine's limit (no SIGUSR2, no SIGKILL: failed 0)."""
    (running,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo started; exec sleep 600\'";'
        ' CPUTime = 10; StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    (too_long,) = stub.submit('Executable = "/bin/true"; CPUTime = 86400;')
    h_rt = 100
    job_id = submit_pilot(
        sge,
        submission,
        stub,
        "-l",
        f"h_rt={h_rt}",
        pilot=("--grace", "5", "--sample-interval", "1"),
    )
    submitted = time.monotonic()
    acct = finished(sge, submission, timeout=h_rt + NOTIFY + 30)
    out = submission.output
    assert (acct["failed"], acct["exit_status"]) == ("0", "0"), (acct, out[-3000:])
    took = time.monotonic() - submitted
    print(f"h_rt={h_rt}: the pilot ended after {took:.1f} s")
    assert took < h_rt, out[-3000:]
    info = stub.client.job(running)
    assert info["status"] == "Failed", (info, out[-3000:])
    assert info["minor_status"] == "Job exceeded wall clock time limit (batch slot ends)", info
    stub.client.get_output(running, tmp_path / "out")
    assert (tmp_path / "out" / "out.txt").read_text() == "started\n"
    assert stub.status(too_long) == "Waiting"
    stamp = str(registration(stub, job_id)["stamp"])
    assert re.search(
        r"done: 1 job\(s\); (no job matched for|too little time left)",
        stub.client.pilot_log(stamp),
    )
