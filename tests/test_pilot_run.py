"""The pilot as a real process against a real stub: the whole path of a job."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FAST, REPO, Stub, pilot_env, run_pilot


def test_guide_examples_end_to_end(stub: Stub, tmp_path: Path) -> None:
    from server_stub.cli import submit_file

    ids = [
        *submit_file(stub.client, REPO / "examples/simple.jdl"),
        *submit_file(stub.client, REPO / "examples/sandbox.jdl"),
    ]
    done = run_pilot(["run", "--server", stub.url, "--site", "T.Site.org", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for job_id in ids:
        assert stub.status(job_id) == "Done"
        statuses = [(h["Status"], h["MinorStatus"]) for h in stub.client.logging_info(job_id)]
        assert ("Running", "Application") in statuses
        assert ("Completing", "Uploading Output Sandbox") in statuses
        assert statuses[-1] == ("Done", "Execution Complete")
        names = stub.client.get_output(job_id, tmp_path / "out" / str(job_id))
        assert sorted(names) == ["StdErr", "StdOut"]
    sandbox_out = (tmp_path / "out" / str(ids[1]) / "StdOut").read_text()
    assert f"job {ids[1]} on" in sandbox_out and "T.Site.org" in sandbox_out
    assert "testJob.sh" in sandbox_out  # ls -la of the job directory shows the sandbox file
    timing = stub.client.job(ids[0])["timing"]
    assert set(timing) >= {"stage_in", "payload", "stage_out"}


def test_failing_payload_reports_exit_code(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo oops >&2; exit 3\'";'
        ' StdError = "err.txt"; OutputSandbox = {"err.txt"};'
    )
    done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = stub.client.job(job)
    assert info["status"] == "Failed"
    assert info["minor_status"] == "Payload failed with exit code 3"
    stub.client.get_output(job, tmp_path / "o")
    assert (tmp_path / "o" / "err.txt").read_text() == "oops\n"


def test_arguments_are_an_argv_never_a_shell(stub: Stub, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (job,) = stub.submit(
        f'Executable = "/bin/echo"; Arguments = "a \'b c\' ; touch {marker}";'
        ' StdOutput = "out"; OutputSandbox = {"out"};'
    )
    run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert stub.status(job) == "Done" and not marker.exists()
    stub.client.get_output(job, tmp_path / "o")
    assert (tmp_path / "o" / "out").read_text() == f"a b c ; touch {marker}\n"


def test_max_jobs_and_unreachable_server(stub: Stub, tmp_path: Path) -> None:
    stub.submit('Executable = "/bin/true"; Parameters = 3;')
    done = run_pilot(["run", "--server", stub.url, "--max-jobs", "2", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(j["status"] for j in stub.client.jobs()) == ["Done", "Done", "Waiting"]
    env = pilot_env(PILOT_SERVER="http://127.0.0.1:9")
    down = run_pilot(["run", *FAST], cwd=tmp_path, env=env, timeout=300)
    assert down.returncode == 20, down.stderr
    assert "127.0.0.1:9" in down.stderr


def test_local_mode(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_pilot(
        ["local", str(REPO / "examples/sandbox.jdl"), "--output-dir", str(out)], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "job local-1 on" in (out / "local-1" / "StdOut").read_text()
    summary = json.loads((out / "status.json").read_text())
    assert summary["jobs"][0]["status"] == "Done"
    assert summary["history"]["local-1"][-1]["Status"] == "Done"

    bad = tmp_path / "fail.jdl"
    bad.write_text('Executable = "/bin/false";')
    failed = run_pilot(["local", str(bad), "--output-dir", str(tmp_path / "o2")], cwd=tmp_path)
    assert failed.returncode == 50


def test_jdl_command(tmp_path: Path) -> None:
    good = tmp_path / "p.jdl"
    good.write_text('Executable = "e"; Arguments = "%s"; Parameters = {"x", "y"}; N = 3;')
    printed = run_pilot(["jdl", str(good)], cwd=tmp_path)
    assert json.loads(printed.stdout)["N"] == 3
    expanded = json.loads(run_pilot(["jdl", "--expand", str(good)], cwd=tmp_path).stdout)
    assert [j["Arguments"] for j in expanded] == ["x", "y"]
    bad = tmp_path / "b.jdl"
    bad.write_text('Executable = "e";\n  Arguments = {"a", ;\n')
    failed = run_pilot(["jdl", str(bad)], cwd=tmp_path)
    assert failed.returncode == 10
    assert failed.stderr.startswith(f"{bad}:2:")


def test_config_precedence(tmp_path: Path) -> None:
    conf = tmp_path / "pilot.toml"
    conf.write_text(
        'site = "FromFile"\nvo = "filevo"\nidle_timeout = 5\n[checks.disk]\nmin_free_mb = 1\n'
    )
    env = pilot_env(PILOT_CONFIG=str(conf), PILOT_VO="envvo", PILOT_IDLE_TIMEOUT="7")
    shown = run_pilot(["config", "--show", "--idle-timeout", "9"], cwd=tmp_path, env=env).stdout
    lines = {line.split()[0]: line for line in shown.splitlines() if line and line[0] != "#"}
    assert "FromFile" in lines["site"] and f"file {conf}" in lines["site"]
    assert "envvo" in lines["vo"] and "env PILOT_VO" in lines["vo"]
    assert "9.0" in lines["idle_timeout"] and "cli --idle-timeout" in lines["idle_timeout"]
    assert "[checks.disk]" in lines and "min_free_mb" in lines
    # the TOML printed is itself a configuration: it reads back to the same values
    again = tmp_path / "again.toml"
    again.write_text(shown)
    echoed = run_pilot(["config", "--show", "--config", str(again)], cwd=tmp_path)
    assert echoed.returncode == 0, echoed.stderr
    assert [ln.split("#")[0] for ln in echoed.stdout.splitlines()] == [
        ln.split("#")[0] for ln in shown.splitlines()
    ]
    conf.write_text("no_such_setting = 1\n")
    bad = run_pilot(["config", "--show"], cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "no_such_setting" in bad.stderr


def test_output_sandbox_of_directories_and_globs(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'mkdir -p res/sub; echo 1 > res/sub/a;'
        ' echo 2 > x.log; echo 3 > y.log\'"; OutputSandbox = {"res", "*.log", "missing.txt"};'
    )
    run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert stub.status(job) == "Done"
    names = stub.client.get_output(job, tmp_path / "o")
    assert {"res/sub/a", "x.log", "y.log"} <= set(names)
    assert "missing.txt" in stub.client.job(job)["application_status"]


def test_unusable_work_dir_is_one_clear_line(stub: Stub, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    done = run_pilot(
        ["run", "--server", stub.url, "--work-dir", str(blocker / "work"), *FAST], cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(blocker) in done.stderr
