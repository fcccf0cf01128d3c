"""Every hostile archive of the catalogue in tests/test_archive.py, as the input sandbox
of a real job through a real pilot: each job ends Failed with its reason, and nothing is
written outside the pilot's work directory."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import FAST, Stub, run_pilot
from tests.test_archive import DEFAULT, HOSTILE, make_layout, snapshot


def test_hostile_sandboxes_fail_their_jobs_and_touch_nothing(stub: Stub, tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "lay")
    work = layout.base / "root" / "work"
    work.mkdir()
    # The pilot unpacks with the default limits, into a fresh job directory (so the case
    # of a link already sitting in the destination cannot arise).
    fresh = "write-through-preexisting-symlink"
    cases = [c for c in HOSTILE if c.limits == DEFAULT and c.id != fresh]
    assert len(cases) >= 15
    expected: dict[int, tuple[str, str, bool]] = {}
    for case in cases:
        archive, reason = case.build(layout)
        sha = stub.client.put_sandbox(archive)
        (job,) = stub.client.submit(f'Executable = "/bin/true"; InputSandbox = {{"SB:{sha}"}};')
        expected[job] = (case.id, reason, case.prefix)
    before = snapshot(layout.base, work)

    done = run_pilot(["run", "--server", stub.url, "--work-dir", str(work), *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    assert snapshot(layout.base, work) == before
    for job, (case_id, reason, prefix) in expected.items():
        info = stub.client.job(job)
        minor = info["minor_status"]
        want = f"Input sandbox rejected: {reason}"
        assert info["status"] == "Failed", (case_id, info)
        assert minor.startswith(want) if prefix else minor == want, (case_id, minor)
    assert not any(work.glob("job-*")), "job directories are removed after each job"
