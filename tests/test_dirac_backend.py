"""DiracBackend against a real DIRAC 9.1.22 WMS (testbed/dirac_server): jobs are submitted
with DIRAC's own ``dirac-wms-job-submit`` as the test user, taken by the pilot's backend
from the real Matcher, and checked with DIRAC's own commands.

Every test gives its job a unique tag and matches with that tag as RequiredTag, so that
no test can take another test's job (nor one left by an earlier run on a kept state).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pilot.backends.base import JobStatus, MatchedJob, Minor, StatusUpdate
from pilot.backends.dirac.backend import DiracBackend
from pilot.backends.dirac.diset import DisetClient
from pilot.errors import SandboxError
from pilot.job import delegation, jdl
from testbed.dirac_server.fixture import DiracServer
from testbed.dirac_server.jobs import cli_status, submit, unique_tag

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parent.parent


def resources(server: DiracServer, tag: str, reference: str | None = None) -> dict[str, Any]:
    """A resource description under DIRAC's names, as the agent builds it."""
    return {
        "Site": server.site,
        "GridCE": server.ce,
        "CEQueue": server.queue,
        "VirtualOrganization": server.vo,
        "Platform": "Linux_x86_64_glibc-2.36",
        "NumberOfProcessors": 2,
        "MaxRAM": 4096,
        "CPUTime": 100000,
        "Tag": [tag],
        "RequiredTag": [tag],
        "PilotReference": reference or f"pilot-{tag}",
        "PilotBenchmark": 10.0,
        "ReleaseVersion": "9.1.22",
    }


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def wait_status(backend: DiracBackend, job_id: str, status: str) -> None:
    wait_for(lambda: backend.job_status(job_id).get("Status") == status, f"job {job_id} {status}")


def take_job(server: DiracServer, backend: DiracBackend, tag: str, job_id: str) -> MatchedJob:
    wait_status(backend, job_id, "Waiting")
    job = backend.match(resources(server, tag))
    assert job is not None, "the Matcher gave no job"
    assert job.job_id == job_id
    return job


def running_job(server: DiracServer, backend: DiracBackend, tmp: Path) -> tuple[str, MatchedJob]:
    """A fresh job submitted, matched by ``backend`` and reported Running/Application."""
    tag = unique_tag()
    job_id = submit(server, tmp, tag)
    job = take_job(server, backend, tag, job_id)
    backend.set_status(job, StatusUpdate(JobStatus.RUNNING, Minor.APPLICATION))
    return job_id, job


def output_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:bz2") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class Timer:
    """Per-call latencies of one test, printed at the end (``pytest -s`` shows them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, name: str, func: Callable[..., Any], *args: Any) -> Any:
        start = time.monotonic()
        result = func(*args)
        self.calls.append((name, time.monotonic() - start))
        return result

    def report(self) -> str:
        return ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in self.calls)


@pytest.fixture
def backend(dirac_server: DiracServer) -> DiracBackend:
    """As the pilot: its own proxy (testpilot), and the ProxyManager for its jobs' owners."""
    return DiracBackend(
        dirac_server.settings(
            proxy_manager_url=dirac_server.urls["proxymanager"],
            configuration_url=dirac_server.urls["configuration"],
        )
    )


def test_job_cycle_input_and_output_sandbox(
    dirac_server: DiracServer,
    backend: DiracBackend,
    tmp_path: Path,
) -> None:
    tag = unique_tag()
    payload = f"input for {tag}\n"
    job_id = submit(dirac_server, tmp_path / "submit", tag, {"input.txt": payload})
    wait_status(backend, job_id, "Waiting")
    timer = Timer()

    job = timer("requestJob", backend.match, resources(dirac_server, tag))
    assert job is not None and job.job_id == job_id
    assert "input.txt" in job.jdl and tag in job.jdl
    assert job.extra["Owner"] == "testuser" and job.extra["Group"] == dirac_server.group

    dest = tmp_path / "in"
    dest.mkdir()
    inputs = jdl.load(job.jdl).inputs
    # the pilot's own identity (testpilot, GenericPilot) may not read testuser's sandbox
    with pytest.raises(SandboxError, match="Not authorized to access sandbox"):
        backend.fetch_input_sandbox(job, inputs, dest)
    # with the owner's delegated proxy (as the pilot gets it for the payload) it may
    owner = delegation.PayloadProxy(
        backend, job, tmp_path, 3600, delegation.DelegationPolicy()
    ).obtain()
    assert owner.identity_slash == dirac_server.user_dn != dirac_server.pilot_dn
    archives = timer("download", backend.fetch_input_sandbox, job, inputs, dest)
    assert len(archives) == 1 and archives[0].parent == dest
    with tarfile.open(archives[0]) as tf:
        member = tf.extractfile("input.txt")
        assert member is not None and member.read().decode() == payload

    running = StatusUpdate(JobStatus.RUNNING, Minor.APPLICATION, "Running")
    timer("setJobStatusBulk", backend.set_status, job, running)
    metrics = {"LoadAverage": 0.3, "MemoryUsed": 42.0, "CPUConsumed": 1.5, "WallClockTime": 2}
    assert timer("sendHeartBeat", backend.heartbeat, job, metrics) == ()
    app = StatusUpdate(application=f"crunching {tag}")
    timer("setJobApplicationStatus", backend.set_status, job, app)
    assert f"ApplicationStatus=crunching {tag}" in cli_status(dirac_server, job_id)

    result = f"result of {tag}\n".encode()
    archive = output_archive(tmp_path / "output-sandbox.tar.bz2", {"std.out": result})
    timer("upload", backend.store_output_sandbox, job, archive)
    done = StatusUpdate(JobStatus.DONE, Minor.EXECUTION_COMPLETE, "Finished")
    timer("setJobStatusBulk", backend.set_status, job, done)
    print(f"\nDISET latencies: {timer.report()}")

    line = cli_status(dirac_server, job_id)
    assert "Status=Done;" in line and "MinorStatus=Execution Complete;" in line, line
    out = tmp_path / "out"
    got = dirac_server.dirac("wms-job-get-output", "-D", str(out), job_id)
    assert got.ok, got.stdout + got.stderr
    assert (out / job_id / "std.out").read_bytes() == result
    backend.use_owner_proxy(job, None)  # the job is over: the pilot's identity again
    with pytest.raises(SandboxError, match="Not authorized to access sandbox"):
        backend.fetch_input_sandbox(job, inputs, dest)


def test_no_matching_job_is_none(dirac_server: DiracServer, backend: DiracBackend) -> None:
    assert backend.match(resources(dirac_server, unique_tag())) is None


def test_kill_reaches_the_pilot_through_the_heartbeat(
    dirac_server: DiracServer,
    backend: DiracBackend,
    tmp_path: Path,
) -> None:
    job_id, job = running_job(dirac_server, backend, tmp_path)
    assert backend.heartbeat(job, {"LoadAverage": 0.1}) == ()

    killed = dirac_server.dirac("wms-job-kill", job_id)
    assert killed.ok, killed.stdout + killed.stderr
    assert backend.heartbeat(job, {"LoadAverage": 0.1}) == ("Kill",)
    assert backend.heartbeat(job, {"LoadAverage": 0.1}) == ()  # a command is sent once
    # every heartbeat sets the job Running again in DIRAC: the pilot reports the end
    backend.set_status(job, StatusUpdate(JobStatus.KILLED, "Received Kill signal"))
    line = cli_status(dirac_server, job_id)
    assert "Status=Killed;" in line and "MinorStatus=Received Kill signal;" in line, line


def test_failed_job_shows_its_exit_code(
    dirac_server: DiracServer,
    backend: DiracBackend,
    tmp_path: Path,
) -> None:
    job_id, job = running_job(dirac_server, backend, tmp_path)
    minor = "Application Finished With Errors (exit code 3)"
    backend.set_status(job, StatusUpdate(JobStatus.FAILED, minor, "exit code 3"))
    line = cli_status(dirac_server, job_id)
    assert "Status=Failed;" in line and f"MinorStatus={minor};" in line, line


def test_a_final_status_in_the_same_millisecond_as_the_last_one_lands(
    dirac_server: DiracServer,
    backend: DiracBackend,
    tmp_path: Path,
) -> None:
    """DIRAC rounds a status's time to the millisecond and ignores an update older than
    the newest: Completing at .xxx6 (stored as .xxx+1) then Done 0.2 ms later was dropped,
    leaving the job Completing (seen in the full suite)."""
    job_id, job = running_job(dirac_server, backend, tmp_path)
    start = int(time.time() * 1000) / 1000 + 0.0006  # rounds up in DIRAC's table
    completing = StatusUpdate(JobStatus.COMPLETING, Minor.OD_UPLOADED, timestamp=start)
    backend.set_status(job, completing)
    done = StatusUpdate(JobStatus.DONE, Minor.EXECUTION_COMPLETE, "exit code 0", start + 0.0002)
    backend.set_status(job, done)
    line = cli_status(dirac_server, job_id)
    assert "Status=Done;" in line and "ApplicationStatus=exit code 0;" in line, line


def test_register_marks_a_known_pilot_running(
    dirac_server: DiracServer,
    backend: DiracBackend,
) -> None:
    ctx = dirac_server.host_context()
    admin = DisetClient(dirac_server.urls["pilotmanager"], ctx, extra_credentials="hosts")
    reference = f"pilot-{unique_tag()}"
    admin.call("addPilotReferences", [reference], dirac_server.vo, "DIRAC")
    info = {
        "site": dirac_server.site,
        "ce": dirac_server.ce,
        "resources": {"PilotReference": reference, "CEQueue": dirac_server.queue},
    }
    backend.register("stamp-1", info)
    pilot = admin.call("getPilotInfo", reference)[reference]
    assert pilot["Status"] == "Running"
    assert pilot["GridSite"] == dirac_server.site
    assert pilot["DestinationSite"] == dirac_server.ce
    assert pilot["Queue"] == dirac_server.queue
    backend.register("stamp-2", {"resources": {"PilotReference": "never-submitted"}})  # no error


FRESH_PROCESS = """
import json, sys, time
t0 = time.monotonic()
from pilot.backends.dirac.backend import DiracBackend, DiracSettings
t1 = time.monotonic()
backend = DiracBackend(DiracSettings(**json.loads(sys.argv[1])))
t2 = time.monotonic()
job = backend.match(json.loads(sys.argv[2]))
t3 = time.monotonic()
print(json.dumps({"job": job and job.job_id, "import_s": t1 - t0, "context_s": t2 - t1,
                  "match_s": t3 - t2, "dirac_imported": "DIRAC" in sys.modules}))
"""


def test_fresh_process_requests_a_job_without_dirac(
    dirac_server: DiracServer,
    backend: DiracBackend,
    tmp_path: Path,
) -> None:
    tag = unique_tag()
    job_id = submit(dirac_server, tmp_path, tag)
    wait_status(backend, job_id, "Waiting")
    settings = dirac_server.settings()
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items()}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIRAC_ROOT_PATH")}
    argv = [
        sys.executable,
        "-c",
        FRESH_PROCESS,
        json.dumps(plain),
        json.dumps(resources(dirac_server, tag)),
    ]
    start = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False
    )
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["job"] == job_id
    assert figures["dirac_imported"] is False
    print(f"\nfresh process: {wall:.2f} s wall; {json.dumps(figures)}")
