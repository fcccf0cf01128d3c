"""The whole pilot (installed package) against a real DIRAC WMS: jobs submitted with
DIRAC's own client are taken from the real Matcher, run, and their output retrieved by
DIRAC's own client; a kill and a failure travel the same way."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from testbed.dirac_server.fixture import DiracServer
from testbed.dirac_server.jobs import (
    env_for,
    pilot_config,
    submit,
    unique_tag,
    wait_for,
)
from tests.conftest import BIN, run_pilot
from tests.test_binary import pilot_binary  # noqa: F401 (session fixture: builds dist/pilot)

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


def run_with_config(
    server: DiracServer,
    conf: Path,
    tmp: Path,
    program: Path = BIN / "pilot",
    proxy: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``program run`` (the package's pilot, or the one-file binary) with ``conf`` against
    the test server's Matcher, in ``tmp``, with the pilots' proxy (or ``proxy``); returns
    when the pilot has exited."""
    argv = ["run", "--config", str(conf), "--server", server.urls["matcher"]]
    return run_pilot(argv, cwd=tmp, env=env_for(server, proxy), timeout=300, program=program)


def run_dirac_pilot(
    server: DiracServer, tmp: Path, tag: str, program: Path = BIN / "pilot"
) -> subprocess.CompletedProcess[str]:
    done = run_with_config(server, pilot_config(server, tmp, tag), tmp, program)
    assert done.returncode == 0, done.stderr
    return done


def test_pilot_runs_a_dirac_job_end_to_end(dirac_server: DiracServer, tmp_path: Path) -> None:
    tag = unique_tag()
    job_id = submit(dirac_server, tmp_path / "submit", tag, {"input.txt": f"payload {tag}\n"})
    wait_for(dirac_server, job_id, "Waiting")
    done = run_dirac_pilot(dirac_server, tmp_path, tag)
    assert f"job {job_id}: Done" in done.stderr
    wait_for(dirac_server, job_id, "Done")
    out = tmp_path / "out"
    got = dirac_server.dirac("wms-job-get-output", "-D", str(out), job_id)
    assert got.ok, got.stdout + got.stderr
    assert (out / job_id / "std.out").read_text() == f"{tag}\n"


def test_failing_payload_ends_failed_with_exit_code(
    dirac_server: DiracServer, tmp_path: Path
) -> None:
    tag = unique_tag()
    workdir = tmp_path / "submit"
    workdir.mkdir()
    (workdir / "job.jdl").write_text(
        f'[ Executable = "/bin/sh"; Arguments = "-c \'exit 7\'"; CPUTime = 1000;'
        f' Tags = {{"{tag}"}}; StdOutput = "std.out"; OutputSandbox = {{"std.out"}}; ]\n'
    )
    submitted = dirac_server.dirac("wms-job-submit", "job.jdl", cwd=workdir)
    job_id = submitted.stdout.split("JobID = ")[1].split()[0]
    wait_for(dirac_server, job_id, "Waiting")
    run_dirac_pilot(dirac_server, tmp_path, tag)
    line = wait_for(dirac_server, job_id, "Failed")
    # as DIRAC's JobWrapper words it; the exit code is in the application status
    assert "MinorStatus=Application Finished With Errors;" in line and "exit code 7" in line, line


def test_dirac_kill_reaches_the_pilot(dirac_server: DiracServer, tmp_path: Path) -> None:
    tag = unique_tag()
    workdir = tmp_path / "submit"
    workdir.mkdir()
    (workdir / "job.jdl").write_text(
        f'[ Executable = "/bin/sleep"; Arguments = "300"; CPUTime = 1000; Tags = {{"{tag}"}};'
        ' StdOutput = "std.out"; OutputSandbox = {"std.out"}; ]\n'
    )
    submitted = dirac_server.dirac("wms-job-submit", "job.jdl", cwd=workdir)
    job_id = submitted.stdout.split("JobID = ")[1].split()[0]
    wait_for(dirac_server, job_id, "Waiting")
    conf = pilot_config(dirac_server, tmp_path, tag)
    pilot = subprocess.Popen(
        [
            str(BIN / "pilot"),
            "run",
            "--config",
            str(conf),
            "--server",
            dirac_server.urls["matcher"],
            "--grace",
            "2",
        ],
        cwd=tmp_path,
        env=env_for(dirac_server),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(dirac_server, job_id, "Running", timeout=120)
        time.sleep(1.0)
        killed = dirac_server.dirac("wms-job-kill", job_id)
        assert killed.ok, killed.stdout + killed.stderr
        _, err = pilot.communicate(timeout=120)
    finally:
        if pilot.poll() is None:
            pilot.kill()
            pilot.wait()
    assert pilot.returncode == 0, err
    assert f"job {job_id}: Killed" in err
    wait_for(dirac_server, job_id, "Killed")


def test_one_file_binary_runs_a_dirac_job(
    dirac_server: DiracServer,
    pilot_binary: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    tag = unique_tag()
    job_id = submit(dirac_server, tmp_path / "submit", tag, {"input.txt": "binary\n"})
    wait_for(dirac_server, job_id, "Waiting")
    run_dirac_pilot(dirac_server, tmp_path, tag, pilot_binary)
    wait_for(dirac_server, job_id, "Done")
    out = tmp_path / "out"
    got = dirac_server.dirac("wms-job-get-output", "-D", str(out), job_id)
    assert got.ok, got.stdout + got.stderr
    assert (out / job_id / "std.out").read_text() == f"{tag}\n"
