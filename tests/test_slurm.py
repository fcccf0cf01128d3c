"""The one-file pilot as the payload of a real Slurm batch job (see tests/slurm/cluster.py).

One private single-node cluster per module. The binary is submitted with
``sbatch --time=...``; it must detect Slurm, learn its time left from ``squeue``, take
and complete the stub's jobs and exit when idle; ``scancel`` of a running pilot must end
its payload Killed with the signal as the reason and upload the payload's output.
With ``CI=true`` a cluster that cannot start fails these tests; elsewhere they skip,
saying why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stub
from tests.pidns import running_cluster
from tests.slurm.cluster import FINAL_STATES, SlurmCluster, start_cluster
from tests.test_binary import ensure_binary

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

KILL_WAIT = 20  # Slurm's SIGTERM -> SIGKILL delay on scancel
TIME_LIMIT_MIN = 5


@pytest.fixture(scope="module")
def pilot_binary() -> Path:
    return ensure_binary()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    root = tmp_path_factory.mktemp("slurm")
    with running_cluster("Slurm", lambda: start_cluster(root, kill_wait=KILL_WAIT)) as cluster:
        yield cluster


def batch_script(tmp: Path, binary: Path, stub: Stub, *extra: str) -> Path:
    """A batch script whose only command is the pilot (exec: it gets Slurm's signals)."""
    work = tmp / "pilot-work"
    args = [
        "run", "--server", stub.url, "--site", "Slurm.Test.org", "--work-dir", str(work),
        "--idle-timeout", "2", "--check-timeout", "20", *extra,
    ]  # fmt: skip
    script = tmp / "pilot.sbatch"
    script.write_text("#!/bin/sh\nexec " + " ".join([str(binary), *args]) + "\n")
    script.chmod(0o755)
    return script


def submit_pilot(slurm: SlurmCluster, script: Path, tmp: Path) -> str:
    return slurm.sbatch(
        script,
        f"--time={TIME_LIMIT_MIN}",
        f"--output={tmp / 'slurm-%j.out'}",
        f"--chdir={tmp}",
        "--job-name=pilot",
    )


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pilot_registration(stub: Stub, job_id: str) -> dict[str, object]:
    for pilot in stub.client.pilots():
        if pilot.get("batch", {}).get("job_id") == job_id:
            return dict(pilot)
    raise AssertionError(f"no pilot registered for Slurm job {job_id}: {stub.client.pilots()}")


def test_pilot_under_slurm_completes_jobs_and_exits_when_idle(
    slurm: SlurmCluster,
    pilot_binary: Path,
    stub: Stub,
    tmp_path: Path,
) -> None:
    ids = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo job $JOBID\'"; CPUTime = 60;'
        ' StdOutput = "StdOut"; OutputSandbox = {"StdOut"}; Parameters = 2;'
    )
    # needs a day of CPU: cannot fit the 5-minute slot the pilot learns from Slurm
    (too_long,) = stub.submit('Executable = "/bin/true"; CPUTime = 86400;')
    job_id = submit_pilot(slurm, batch_script(tmp_path, pilot_binary, stub), tmp_path)
    final = slurm.wait_job(job_id, FINAL_STATES, timeout=120)
    out = (tmp_path / f"slurm-{job_id}.out").read_text(errors="replace")
    assert (final["JobState"], final["ExitCode"]) == ("COMPLETED", "0:0"), out[-3000:]
    for job in ids:
        info = stub.client.job(job)
        assert (info["status"], info["minor_status"]) == ("Done", "Execution Complete"), info
        stub.client.get_output(job, tmp_path / "out" / str(job))
        assert (tmp_path / "out" / str(job) / "StdOut").read_text() == f"job {job}\n"
    assert stub.status(too_long) == "Waiting"
    batch = pilot_registration(stub, job_id)["batch"]
    assert isinstance(batch, dict)
    assert batch["system"] == "slurm"
    assert batch["sources"]["wall_time_left"] == "squeue %L"
    assert 0 < batch["wall_time_left"] <= TIME_LIMIT_MIN * 60


def test_scancel_kills_the_payload_with_the_signal_as_reason(
    slurm: SlurmCluster,
    pilot_binary: Path,
    stub: Stub,
    tmp_path: Path,
) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo started; exec sleep 300\'"; CPUTime = 60;'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    job_id = submit_pilot(slurm, batch_script(tmp_path, pilot_binary, stub), tmp_path)
    wait_for(
        lambda: stub.client.job(job)["minor_status"] == "Application", 90, "the payload to run"
    )
    done = slurm.command(["scancel", job_id])
    assert done.returncode == 0, done.stderr
    slurm.wait_job(job_id, frozenset({"CANCELLED"}), timeout=30)
    wait_for(
        lambda: stub.client.job(job)["status"] in {"Killed", "Failed", "Done"},
        KILL_WAIT + 10,
        "the pilot to report the payload's end",
    )
    info = stub.client.job(job)
    out = (tmp_path / f"slurm-{job_id}.out").read_text(errors="replace")
    names = stub.client.get_output(job, tmp_path / "out")  # uploaded whatever the status
    assert "out.txt" in names, (info, out[-3000:])
    assert (tmp_path / "out" / "out.txt").read_text() == "started\n"
    assert info["status"] == "Killed", (info, out[-3000:])
    assert "pilot received SIGTERM" in info["minor_status"], info
