"""The whole pilot (installed package) against a real DIRAC WMS: jobs submitted with
DIRAC's own client are taken from the real Matcher, run, and their output retrieved by
DIRAC's own client; a kill and a failure travel the same way."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, pilot_env, run_pilot
from tests.dirac_server.fixture import DiracServer
from tests.test_binary import pilot_binary  # noqa: F401 (session fixture: builds dist/pilot)
from tests.test_dirac_backend import cli_status, submit, unique_tag

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


def pilot_config(
    server: DiracServer,
    tmp: Path,
    tag: str,
    idle_timeout: float = 3,
    disable: tuple[str, ...] = ("cpu",),
) -> Path:
    conf = tmp / f"pilot-{tag}.toml"
    disabled = ", ".join(f'"{name}"' for name in disable)
    conf.write_text(
        f'site = "{server.site}"\nce = "{server.ce}"\nqueue = "{server.queue}"\n'
        f'vo = "{server.vo}"\ntags = ["{tag}"]\nrequired_tags = ["{tag}"]\n'
        f"idle_timeout = {idle_timeout}\nheartbeat_interval = 1\nsample_interval = 0.5\n"
        f"disable_check = [{disabled}]\n"
        "[dirac]\n"
        f'matcher = "{server.urls["matcher"]}"\n'
        f'jobstateupdate = "{server.urls["jobstateupdate"]}"\n'
        f'sandboxstore = "{server.urls["sandboxstore"]}"\n'
    )
    return conf


def env_for(server: DiracServer) -> dict[str, str]:
    return pilot_env(X509_USER_PROXY=str(server.proxy), X509_CERT_DIR=str(server.ca_dir))


def run_dirac_pilot(server: DiracServer, tmp: Path, tag: str) -> subprocess.CompletedProcess[str]:
    conf = pilot_config(server, tmp, tag)
    argv = ["run", "--config", str(conf), "--server", server.urls["matcher"]]
    done = run_pilot(argv, cwd=tmp, env=env_for(server), timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def wait_for(server: DiracServer, job_id: str, word: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = cli_status(server, job_id)
        if f"Status={word};" in line:
            return line
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {word}: {line}")


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
    conf = pilot_config(dirac_server, tmp_path, tag)
    done = subprocess.run(
        [str(pilot_binary), "run", "--config", str(conf), "--server", dirac_server.urls["matcher"]],
        cwd=tmp_path,
        env=env_for(dirac_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    wait_for(dirac_server, job_id, "Done")
    out = tmp_path / "out"
    got = dirac_server.dirac("wms-job-get-output", "-D", str(out), job_id)
    assert got.ok, got.stdout + got.stderr
    assert (out / job_id / "std.out").read_text() == f"{tag}\n"
