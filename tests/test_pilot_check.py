"""`pilot check` (dry run) and black-hole protection in `pilot run`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import BIN, Stub, pilot_env, run_pilot

DIRAC_KEYS = {
    "Site", "GridCE", "VirtualOrganization", "Platform", "Architecture", "NumberOfProcessors",
    "MaxRAM", "CPUTime", "WallClockTimeLeft", "DiskSpace", "NumberOfGPUs", "Tag", "RequiredTag",
    "PilotReference", "PilotBenchmark", "ReleaseVersion", "CEQueue",
}
BUILTIN = {"cpu", "memory", "disk", "software", "cvmfs", "credentials", "container", "gpu", "load"}


def test_check_json_lists_every_builtin_and_all_keys(tmp_path: Path) -> None:
    start = time.monotonic()
    done = run_pilot(["check", "--json", "--queue", "q1", "--vo", "vo1"], cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert done.returncode in (0, 30), done.stderr
    report = json.loads(done.stdout)
    names = {r["name"] for r in report["checks"]["results"]}
    assert BUILTIN <= names
    assert DIRAC_KEYS <= set(report["resources"])
    assert report["resources"]["PilotBenchmark"] > 0
    assert elapsed < 10  # the goal (< 3 s) is measured in bench/, not asserted here


def test_check_with_server_explains_near_misses(stub: Stub, tmp_path: Path) -> None:
    stub.submit('Executable = "/bin/true"; Tags = {"GPU"};')
    stub.submit('Executable = "/bin/true"; BannedSites = {"Here.Site"}; Parameters = 3;')
    done = run_pilot(["check", "--server", stub.url, "--site", "Here.Site",
                      "--disable-check", "cpu"], cwd=tmp_path)
    assert "no waiting job would be matched" in done.stdout
    assert "job 1: needs tag GPU" in done.stdout
    assert "job 2 and 2 like it: site Here.Site banned" in done.stdout
    assert all(j["status"] == "Waiting" for j in stub.client.jobs())
    stub.submit('Executable = "/bin/true";')
    again = run_pilot(
        ["check", "--server", stub.url, "--site", "Here.Site", "--disable-check", "cpu"],
        cwd=tmp_path,
    )
    assert "would be matched: job 5" in again.stdout


def test_failed_required_check_takes_no_job(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit('Executable = "/bin/true";')
    checks = tmp_path / "checks.d"
    checks.mkdir()
    script = checks / "site-broken"
    script.write_text("#!/bin/sh\necho 'scratch is read-only' >&2\nexit 1\n")
    script.chmod(0o755)
    start = time.monotonic()
    done = run_pilot(
        ["run", "--server", stub.url, "--checks-dir", str(checks), "--require-check",
         "site-broken", "--disable-check", "cpu", "--failure-sleep", "1"],
        cwd=tmp_path,
    )
    assert done.returncode == 30, done.stderr
    assert time.monotonic() - start >= 1.0
    assert stub.status(job) == "Waiting"
    (pilot,) = stub.client.pilots()
    assert pilot["checks"]["ok"] is False
    failed = [r for r in pilot["checks"]["results"] if r["name"] == "site-broken"]
    assert failed[0]["status"] == "FAILED" and "read-only" in failed[0]["message"]
    listing = run_pilot(["--version"], cwd=tmp_path)
    assert "pilot-agent" in listing.stdout
    shown = subprocess.run(
        [str(BIN / "pilot-stub"), "--server", stub.url, "pilots"],
        capture_output=True, text=True, env=pilot_env(),
    ).stdout
    assert "NOT FIT" in shown and "site-broken" in shown and "read-only" in shown
