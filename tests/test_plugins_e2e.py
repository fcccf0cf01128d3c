"""Plugins end to end: a VO entry-point plugin and an executable check change what the
pilot is matched with; hung checks (a plugin that never returns, a CVMFS repository
whose read blocks) cannot hold up `pilot check`."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tests.conftest import FAST, REPO, Stub, run_pilot
from tests.pluginpath import plugin_dir

CHECKS_D = REPO / "tests" / "data" / "checks.d"


def test_plugin_and_script_tags_decide_the_match(stub: Stub, tmp_path: Path) -> None:
    checks = tmp_path / "checks.d"
    checks.mkdir()
    shutil.copy(CHECKS_D / "pass-json.sh", checks / "pass-json.sh")
    (vo_job,) = stub.submit('Executable = "/bin/true"; Tags = {"sample-vo:ok"};')
    (site_job,) = stub.submit('Executable = "/bin/true"; Tags = {"site:test"};')

    without = run_pilot(
        ["run", "--server", stub.url, "--disable-check", "sample-vo", *FAST], cwd=tmp_path
    )
    assert without.returncode == 0, without.stderr
    assert stub.status(vo_job) == "Waiting" and stub.status(site_job) == "Waiting"

    report = json.loads(
        run_pilot(
            ["check", "--json", "--checks-dir", str(checks), "--disable-check", "cpu"], cwd=tmp_path
        ).stdout
    )
    names = {r["name"]: r for r in report["checks"]["results"]}
    assert names["sample-vo"]["status"] == "PASSED" and names["pass-json.sh"]["status"] == "PASSED"
    assert {"sample-vo:ok", "site:test"} <= set(report["resources"]["Tag"])

    done = run_pilot(
        ["run", "--server", stub.url, "--checks-dir", str(checks), *FAST], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert stub.status(vo_job) == "Done" and stub.status(site_job) == "Done"


def test_hung_checks_do_not_hold_up_pilot_check(tmp_path: Path) -> None:
    checks = tmp_path / "checks.d"
    checks.mkdir()
    shutil.copy(CHECKS_D / "hang.sh", checks / "hang.sh")
    cvmfs = tmp_path / "cvmfs"
    (cvmfs / "ok.example.org").mkdir(parents=True)
    os.mkfifo(cvmfs / "stuck.example.org")  # a read blocks, like a stuck mount
    conf = tmp_path / "pilot.toml"
    repos = '["ok.example.org", "stuck.example.org"]'
    conf.write_text(
        f'[checks.cvmfs]\nroot = "{cvmfs}"\nrepositories = {repos}\nprobe_timeout = 2\n'
    )
    start = time.monotonic()
    done = run_pilot(
        [
            "check",
            "--json",
            "--config",
            str(conf),
            "--checks-dir",
            str(checks),
            "--check-timeout",
            "2",
            "--disable-check",
            "cpu",
        ],
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - start
    report = json.loads(done.stdout)
    names = {r["name"]: r for r in report["checks"]["results"]}
    assert names["hang.sh"]["status"] == "FAILED" and "timed out" in names["hang.sh"]["message"]
    assert names["cvmfs"]["status"] == "FAILED" and "stuck.example.org" in names["cvmfs"]["message"]
    assert done.returncode == 30  # cvmfs is required: the node is not fit
    assert elapsed < 2 + 1 + 1.5  # timeout + 1 s, plus the interpreter's own start-up
    hung = int((tmp_path / "hang.pid").read_text()) if (tmp_path / "hang.pid").exists() else None
    if hung is not None:
        assert not Path(f"/proc/{hung}").exists(), "the hung check was left running"


def test_plugin_path_adds_plugins_installed_with_pip_target(tmp_path: Path) -> None:
    site = plugin_dir(tmp_path)
    done = run_pilot(
        ["check", "--json", "--disable-check", "cpu", "--plugin-path", str(site)], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    names = {r["name"]: r for r in report["checks"]["results"]}
    assert names["site-vo"]["status"] == "PASSED", names["site-vo"]
    assert names["site-vo"]["source"] == "entry-point:site-vo-check"
    assert "site-vo:yes" in report["resources"]["Tag"]
    # a plugin directory that is not there would leave the VO's checks out: fatal
    missing = tmp_path / "not-there"
    refused = run_pilot(
        ["check", "--plugin-path", str(site), "--plugin-path", str(missing)], cwd=tmp_path
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == f"pilot: --plugin-path {missing}: no such directory\n"
    without = json.loads(
        run_pilot(["check", "--json", "--disable-check", "cpu"], cwd=tmp_path).stdout
    )
    assert "site-vo" not in {r["name"] for r in without["checks"]["results"]}
