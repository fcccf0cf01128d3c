"""A full work directory: the job fails with the reason, the pilot goes on, nothing lost.

The work directory is a 2 MiB tmpfs mounted in a private mount namespace (needs root
and unshare; skipped with the reason elsewhere, failed under CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import BIN, FAST, Stub, pilot_env, unavailable


def _needs_root_and_unshare() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root to mount a small tmpfs"
    elif shutil.which("unshare") is None:
        reason = "needs unshare (util-linux)"
    if reason:
        unavailable(reason)


def test_full_work_dir_fails_the_job_not_the_pilot(stub: Stub, tmp_path: Path) -> None:
    _needs_root_and_unshare()
    big = os.urandom(3 << 20).hex()  # incompressible enough: the unpacked file needs ~6 MB
    (too_big,) = stub.submit(
        'Executable = "/bin/true"; InputSandbox = {"big.txt"};', {"big.txt": big}
    )
    (fits,) = stub.submit(
        'Executable = "/bin/echo"; Arguments = "fine"; StdOutput = "out";'
        ' OutputSandbox = {"out"}; Priority = 0;'
    )
    work = tmp_path / "work"
    work.mkdir()
    conf = tmp_path / "pilot.toml"  # let the disk check accept the tiny scratch
    conf.write_text("[checks.disk]\nmin_free_mb = 1\n")
    pilot = [
        str(BIN / "pilot"),
        "run",
        "--server",
        stub.url,
        "--work-dir",
        str(work),
        "--config",
        str(conf),
        "--min-free-disk-mb",
        "0",
        "--max-concurrent",  # the second job after the first: not while it fills the disk
        "1",
        *FAST,
    ]
    script = 'mount -t tmpfs -o size=2m tmpfs "$0" && shift 0 && exec "$@"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(work), *pilot],
        capture_output=True,
        text=True,
        timeout=120,
        env=pilot_env(),
    )
    assert done.returncode == 0, done.stderr
    info = stub.client.job(too_big)
    assert info["status"] == "Failed", info
    assert "no space left" in info["minor_status"].lower(), info["minor_status"]
    assert stub.status(fits) == "Done", done.stderr[-3000:]
    stub.client.get_output(fits, tmp_path / "o")
    assert (tmp_path / "o" / "out").read_text() == "fine\n"
