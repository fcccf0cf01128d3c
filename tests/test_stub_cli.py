"""``pilot-stub`` as a DIRAC user drives it: the commands, their output and exit codes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from pilot.errors import ServerUnreachable
from server_stub.userclient import UserClient
from tests.conftest import BIN, FAST, Stub, pilot_env, run_pilot


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pilot-stub"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env or pilot_env(),
        cwd=tempfile.gettempdir(),  # a relative path given by mistake never lands in the checkout
    )


def write_job(folder: Path, name: str = "job.jdl", body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "input.txt").write_text("the same input\n")
    jdl = folder / name
    jdl.write_text(
        f'JobName = "same-input"; Executable = "/bin/cat"; Arguments = "input.txt";'
        f' InputSandbox = {{"input.txt"}}; {body}'
    )
    return jdl


def test_submit_prints_job_ids_and_appends_them_to_a_file(stub: Stub, tmp_path: Path) -> None:
    jdl = write_job(tmp_path)
    ids_file = tmp_path / "ids"
    done = cli("--server", stub.url, "submit", str(jdl), str(jdl), "-f", str(ids_file))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(" = ")[0] for line in lines] == ["JobID", "JobID"]
    ids = [int(line.split(" = ")[1]) for line in lines]
    assert [int(i) for i in ids_file.read_text().split()] == ids
    as_json = cli("--server", stub.url, "submit", "--json", str(jdl))
    (row,) = json.loads(as_json.stdout)
    assert row["file"] == str(jdl) and len(row["JobID"]) == 1


def test_submit_loses_no_job_id_when_something_else_fails(stub: Stub, tmp_path: Path) -> None:
    jdl = write_job(tmp_path)
    bad = tmp_path / "bad.jdl"
    bad.write_text('Executable = "x";\nArguments = "open\n')
    no_file = cli("--server", stub.url, "submit", str(jdl), "-f", str(tmp_path))
    assert no_file.returncode == 2 and no_file.stderr.startswith(f"pilot-stub: -f {tmp_path}:")
    assert stub.client.jobs() == []  # refused before anything was submitted
    ids_file = tmp_path / "ids"
    half = cli("--server", stub.url, "submit", "--json", str(jdl), str(bad), "-f", str(ids_file))
    assert half.returncode == 10 and "bad.jdl:2:" in half.stderr
    (row,) = json.loads(half.stdout)  # the first file's job is said, in JSON too
    assert row["JobID"] == [job["job_id"] for job in stub.client.jobs()]
    assert ids_file.read_text().split() == [str(i) for i in row["JobID"]]


class _LosesAnswers(httpx.HTTPTransport):
    """The request reaches the stub; its answer never comes back."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        super().handle_request(request).read()
        raise httpx.ReadError("connection reset by peer")


def test_a_lost_answer_to_a_submission_is_not_retried(stub: Stub) -> None:
    client = UserClient(stub.url, transport=_LosesAnswers())
    with pytest.raises(ServerUnreachable, match="its jobs may be stored: see pilot-stub jobs"):
        client.submit('Executable = "/bin/true";')
    assert len(stub.client.jobs()) == 1  # stored once, not once per try
    with pytest.raises(ServerUnreachable):  # a read is still retried, and then given up
        client.jobs()


def test_same_sandbox_is_stored_once(stub: Stub, tmp_path: Path) -> None:
    jdl = write_job(tmp_path)
    first = stub.client.get_jdl(int(cli("--server", stub.url, "submit", str(jdl)).stdout[8:]))
    os.utime(tmp_path / "input.txt", (1e9, 1e9))  # same content, another time stamp
    second = stub.client.get_jdl(int(cli("--server", stub.url, "submit", str(jdl)).stdout[8:]))
    sha = first.split("SB:")[1][:64]
    assert second.split("SB:")[1][:64] == sha
    stored = [p for p in (stub.tmp / "sandboxes").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == [sha]


def test_status_of_several_jobs_reports_each(stub: Stub, tmp_path: Path) -> None:
    (a,) = stub.submit('JobName = "alpha"; Executable = "/bin/true";')
    (b,) = stub.submit('Executable = "/bin/true";')
    done = cli("--server", stub.url, "status", str(a), "99999", str(b))
    assert done.returncode == 2
    assert done.stderr.strip() == "pilot-stub: job 99999: no such job"
    header, *rows = done.stdout.splitlines()
    assert header.split() == [
        "JobID",
        "JobName",
        "Status",
        "MinorStatus",
        "ApplicationStatus",
        "Site",
    ]
    assert [r.split()[:3] for r in rows] == [[str(a), "alpha", "Waiting"], [str(b), "-", "Waiting"]]
    # columns line up: every row starts each column where the header does
    assert all(r.index("Waiting") == header.index("Status") for r in rows)
    good = cli("--server", stub.url, "status", "--json", str(a))
    assert good.returncode == 0 and json.loads(good.stdout)[0]["job_name"] == "alpha"


def test_kill_delete_reschedule_several_ids_and_a_file(stub: Stub, tmp_path: Path) -> None:
    ids = [stub.submit('Executable = "/bin/true";')[0] for _ in range(3)]
    id_file = tmp_path / "ids"
    id_file.write_text(f"# my jobs\n{ids[1]}, {ids[2]}\n")
    killed = cli("--server", stub.url, "kill", str(ids[0]), "-f", str(id_file))
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.splitlines() == [f"job {i}: Killed" for i in ids]
    again = cli("--server", stub.url, "kill", str(ids[0]), "--json")
    assert again.returncode == 2 and json.loads(again.stdout) == []
    assert again.stderr.strip() == f"pilot-stub: job {ids[0]}: is already Killed"
    back = cli("--server", stub.url, "reschedule", str(ids[0]), "--json")
    assert json.loads(back.stdout) == [{"JobID": ids[0], "result": "Rescheduled"}]
    assert stub.status(ids[0]) == "Waiting"
    offer = {"Site": "S", "CPUTime": 10**6, "NumberOfProcessors": 1, "MaxRAM": 4096}
    answer = stub.client.json(
        "POST", "/api/jobs/match", json={"pilot": "p", "resources": offer, "dry_run": True}
    )
    assert answer["match"]["job_id"] == ids[0]  # matchable again, not just marked Waiting
    deleted = cli("--server", stub.url, "delete", str(ids[1]))
    assert deleted.stdout.strip() == f"job {ids[1]}: Deleted"
    listed = cli("--server", stub.url, "jobs", "--json")
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [ids[0], ids[2]]
    everything = cli("--server", stub.url, "jobs", "--all").stdout.splitlines()
    assert [line.split()[0] for line in everything[1:]] == [str(i) for i in ids]
    only = cli("--server", stub.url, "jobs", "--status", "deleted").stdout.splitlines()
    assert [line.split()[0] for line in only[1:]] == [str(ids[1])]


def test_files_with_and_without_the_lfn_prefix(stub: Stub, tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    source.write_text("catalogue content\n")
    put = cli("--server", stub.url, "put-file", "/vo/user/data.txt", str(source))
    assert put.returncode == 0 and put.stdout.startswith("LFN:/vo/user/data.txt "), put.stderr
    got = cli(
        "--server", stub.url, "get-file", "LFN:/vo/user/data.txt", "--dir", str(tmp_path / "d")
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "d" / "data.txt").read_text() == "catalogue content\n"
    again = str(tmp_path / "e")
    as_json = cli("--server", stub.url, "get-file", "/vo/user/data.txt", "--json", "--dir", again)
    assert json.loads(as_json.stdout)["size"] == len("catalogue content\n")


def test_peek_parameters_and_jdl_of_a_job_that_ran(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit(
        'JobName = "talker"; Executable = "/bin/sh";'
        " Arguments = \"-c 'echo first line; echo second line; sleep 2'\";"
        ' StdOutput = "StdOut"; OutputSandbox = {"StdOut"};'
    )
    done = run_pilot(
        ["run", "--server", stub.url, *FAST, "--heartbeat-interval", "0.3", "--max-jobs", "1"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    peek = cli("--server", stub.url, "peek", str(job), "-n", "1")
    assert peek.returncode == 0 and peek.stdout == "second line\n", peek.stderr
    params = cli("--server", stub.url, "parameters", str(job), "--json")
    values = json.loads(params.stdout)
    assert values["JobName"] == "talker" and values["Site"] == "Local.localhost"
    assert values["HostName"] and values["NumberOfProcessors"] >= 1
    assert "CPUConsumed" in values and "Timing.payload" in values
    table = cli("--server", stub.url, "parameters", str(job)).stdout.splitlines()
    assert table[0].split() == ["Parameter", "Value"] and "None" not in "\n".join(table)
    text = cli("--server", stub.url, "get-jdl", str(job)).stdout
    assert 'JobName = "talker";' in text
    for _ in range(2):  # fetching again replaces the files instead of refusing them
        got = cli("--server", stub.url, "get-output", str(job), "--dir", str(tmp_path / "o"))
        assert got.returncode == 0 and got.stdout.startswith("1 file(s)"), got.stderr
    assert (tmp_path / "o" / str(job) / "StdOut").read_text().endswith("second line\n")


def test_failed_get_output_leaves_no_empty_job_directory(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit('Executable = "/bin/true";')
    done = cli("--server", stub.url, "get-output", str(job), "--dir", str(tmp_path / "o"))
    assert done.returncode == 2 and "has no output sandbox" in done.stderr
    assert not (tmp_path / "o" / str(job)).exists()


def test_url_file_from_the_environment(stub: Stub, tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(stub.url + "\n")
    done = cli("jobs", env=pilot_env(PILOT_SERVER_FILE=str(url_file)))
    assert done.returncode == 0 and done.stdout.strip() == "no jobs", done.stderr


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    jdl = tmp_path / "many.jdl"
    jdl.write_text('Executable = "/bin/echo"; Parameters = 1000; Arguments = "%n";')
    # the pipe may break inside a command or at the last flush: try both several times
    runs = [("pilot", ["jdl", "--expand", str(jdl)])] * 5 + [("pilot", ["--help"])]
    for program, args in runs:
        proc = subprocess.Popen(
            [str(BIN / program), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=pilot_env(),
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()  # what `| head -1` does
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=30) == 0 and err == "", err


def test_large_transfers_show_progress_on_a_terminal(stub: Stub, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(24 << 20))
    master, slave = pty.openpty()
    try:
        done = subprocess.run(
            [str(BIN / "pilot-stub"), "--server", stub.url, "put-file", "/vo/big.bin", str(big)],
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=120,
            env=pilot_env(),
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert done.returncode == 0, seen
    assert b"upload big.bin: 24.0 of 24.0 MiB 100 %" in seen, seen
    piped = cli("--server", stub.url, "put-file", "/vo/big2.bin", str(big))
    assert piped.returncode == 0 and piped.stderr == ""  # not a terminal: nothing drawn
