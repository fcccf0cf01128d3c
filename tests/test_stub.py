"""The matcher stub's routes and its command line, over real HTTP on loopback."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from pilot.errors import AuthError, ServerError
from server_stub.store import Store, StoreError
from tests.conftest import BIN, Stub, start_stub

RES = {"Site": "S", "CPUTime": 10**6, "NumberOfProcessors": 1}


def _claim(stub: Stub) -> tuple[int, str]:
    answer = stub.client.json("POST", "/api/jobs/match", json={"pilot": "p", "resources": RES})
    return int(answer["job_id"]), str(answer["token"])


def test_submit_parametric_and_history(stub: Stub) -> None:
    ids = stub.submit('Executable = "echo"; Arguments = "%s"; Parameters = {"a", "b", "c"};')
    assert len(ids) == 3
    history = stub.client.logging_info(ids[0])
    assert [h["Status"] for h in history] == ["Received", "Waiting"]
    assert stub.client.jobs("Waiting") and len(stub.client.jobs("Waiting")) == 3


def test_invalid_jdl_is_refused_whole(stub: Stub) -> None:
    with pytest.raises(ServerError, match="invalid JDL"):
        stub.client.submit('Executable = "x"; Arguments = "unterminated;')
    with pytest.raises(ServerError, match="Executable"):
        stub.client.submit('JobName = "no executable";')
    assert stub.client.jobs() == []


def test_sandbox_hash_mismatch_and_limit(stub: Stub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "blob"
    data.write_bytes(b"hello")
    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ServerError, match="sha256"):
        stub.client.upload(f"/api/sandboxes/{wrong}", data)
    sha = stub.client.put_sandbox(data)
    out = tmp_path / "back"
    stub.client.download(f"/api/sandboxes/{sha}", out, sha)
    assert out.read_bytes() == b"hello"

    small = start_stub(tmp_path / "small", max_sandbox_bytes=3)
    try:
        with pytest.raises(ServerError, match="exceeds the limit"):
            small.client.put_sandbox(data)
    finally:
        small.server.stop()


def test_job_token_scopes_updates(stub: Stub) -> None:
    a, b = stub.submit('Executable = "x"; Parameters = 2;')
    job_a, token_a = _claim(stub)
    job_b, _ = _claim(stub)
    assert {job_a, job_b} == {a, b}
    update = {"1.0": {"Status": "Running", "MinorStatus": "Application"}}
    with pytest.raises(AuthError, match="403"):
        stub.client.json(
            "PATCH", "/api/jobs/status", json={str(job_b): update}, headers={"X-Job-Token": token_a}
        )
    with pytest.raises(AuthError):
        stub.client.json("PATCH", "/api/jobs/heartbeat", json={str(job_b): {}})
    stub.client.json(
        "PATCH", "/api/jobs/status", json={str(job_a): update}, headers={"X-Job-Token": token_a}
    )
    assert stub.status(job_a) == "Running" and stub.status(job_b) == "Matched"


def test_kill_waiting_and_running(stub: Stub) -> None:
    first, second = stub.submit('Executable = "x"; Parameters = 2;')
    job, token = _claim(stub)
    other = second if job == first else first
    assert stub.client.kill(other) == "Killed"
    assert stub.status(other) == "Killed"
    beat = stub.client.json(
        "PATCH",
        "/api/jobs/heartbeat",
        json={str(job): {"CPUConsumed": 1}},
        headers={"X-Job-Token": token},
    )
    assert beat == []
    assert stub.client.kill(job) == "Kill requested"
    beat = stub.client.json(
        "PATCH", "/api/jobs/heartbeat", json={str(job): {}}, headers={"X-Job-Token": token}
    )
    assert beat == [{"job_id": job, "command": "Kill"}]
    stub.client.delete(job)
    assert stub.status(job) == "Deleted"


def test_stalled_job_is_rescheduled_then_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stub = start_stub(tmp_path / "s", stalled_after=0.3, reap_interval=0.1, max_reschedules=1)
    try:
        (job,) = stub.submit('Executable = "x";')
        _, token = _claim(stub)
        deadline = time.monotonic() + 10
        while stub.status(job) != "Waiting" and time.monotonic() < deadline:
            time.sleep(0.1)
        statuses = [h["Status"] for h in stub.client.logging_info(job)]
        assert statuses[-2:] == ["Stalled", "Waiting"]
        # the pilot that lost the job can no longer update it
        with pytest.raises(AuthError):
            stub.client.json(
                "PATCH",
                "/api/jobs/status",
                headers={"X-Job-Token": token},
                json={str(job): {"1": {"Status": "Done"}}},
            )
        _claim(stub)
        while stub.status(job) != "Failed" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stub.client.job(job)["minor_status"] == "Maximum of reschedulings reached"
    finally:
        stub.server.stop()


def test_pilot_registration_and_log(stub: Stub) -> None:
    stub.client.json("POST", "/api/pilots", json={"stamp": "node-1-abc", "info": {"site": "S"}})
    stub.client.json("PUT", "/api/pilots/node-1-abc/log", json={"log": "line one\n"})
    assert stub.client.pilots()[0]["site"] == "S"
    assert stub.client.pilot_log("node-1-abc") == "line one\n"
    with pytest.raises(ServerError, match="malformed"):
        stub.client.json("POST", "/api/pilots", json={"stamp": "bad stamp/..", "info": {}})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pilot-stub"), *args], capture_output=True, text=True, timeout=60
    )


def test_cli_errors_are_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    down = _cli("--server", "http://127.0.0.1:9", "status", "1")
    assert down.returncode == 20 and "Traceback" not in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.jdl"
    bad.write_text('Executable = "x";\nArguments = "open\n')
    out = _cli("--server", "http://127.0.0.1:9", "submit", str(bad))
    assert out.returncode == 10 and f"{bad}:2:" in out.stderr


def test_cli_serve_prints_url_and_submits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [
            str(BIN / "pilot-stub"),
            "serve",
            "--port",
            "0",
            "--db",
            str(tmp_path / "db.sqlite"),
            "--url-file",
            str(url_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url_file.read_text().strip() == url
        jdl = tmp_path / "j.jdl"
        jdl.write_text('Executable = "/bin/true";')
        sub = _cli("--server", url, "submit", str(jdl))
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith("JobID = ")
        job = sub.stdout.split("=")[1].strip()
        status = _cli("--url-file", str(url_file), "status", job, "--json")
        assert '"Waiting"' in status.stdout
        header, row = _cli("--server", url, "jobs").stdout.splitlines()
        assert header.split()[:3] == ["JobID", "JobName", "Status"] and row.split()[0] == job
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_refuses_bad_pool_settings() -> None:
    for option, value in (
        ("--workers", "0"),
        ("--max-connections", "-3"),
        ("--keepalive-timeout", "x"),
    ):
        done = _cli("serve", option, value)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        (line,) = done.stderr.splitlines()  # one line: the option, the value, what is allowed
        assert f"argument {option}: " in line and value in line, line
        assert "out of range" in line or "is not a" in line, line


def test_cli_serve_refuses_nonsense_settings(tmp_path: Path) -> None:
    """NaN passed every '> 0' check; a negative --stalled-after stalled every running
    job at each reap; a port out of range or a directory as --db gave a traceback."""
    for option, value, told in (
        ("--keepalive-timeout", "nan", "'nan' is not a finite number"),
        ("--reap-interval", "nan", "'nan' is not a finite number"),
        ("--stalled-after", "-5", "-5 is out of range"),
        ("--max-parametric", "0", "0 is out of range"),
        ("--max-reschedules", "-1", "-1 is out of range"),
        ("--port", "70000", "70000 is out of range: 0..65535"),
    ):
        done = _cli("serve", option, value)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert f"argument {option}: {told}" in done.stderr, done.stderr
    done = _cli("serve", "--db", str(tmp_path))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{tmp_path}" in done.stderr


def test_a_second_stub_on_the_same_database_is_refused(tmp_path: Path) -> None:
    """Each stub process matches from its own in-memory index of the waiting jobs: a
    second one on the same database would never see the first one's new jobs."""
    db = tmp_path / "db.sqlite"
    proc = subprocess.Popen(
        [str(BIN / "pilot-stub"), "serve", "--db", str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("http://")
        second = _cli("serve", "--db", str(db))
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"{db} is in use by another process" in second.stderr
        with pytest.raises(StoreError, match="in use by another process"):
            Store(db)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert Store(db).jobs() == []  # free again once it stopped
