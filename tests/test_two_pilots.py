"""Two pilots against one stub with 500 queued jobs: every job done exactly once."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import BIN, FAST, Stub, pilot_env

N_JOBS = 500


def test_500_jobs_two_pilots_each_exactly_once(stub: Stub, tmp_path: Path) -> None:
    ids = stub.client.submit(f'Executable = "/bin/true"; Parameters = {N_JOBS};')
    assert len(ids) == N_JOBS
    pilots = [
        subprocess.Popen(
            [
                str(BIN / "pilot"),
                "run",
                "--server",
                stub.url,
                "--log-level",
                "INFO",
                "--work-dir",
                str(tmp_path / f"w{n}"),
                *FAST,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=pilot_env(),
        )
        for n in (1, 2)
    ]
    logs = [p.communicate(timeout=600)[1] for p in pilots]
    assert [p.returncode for p in pilots] == [0, 0], logs

    ran = [re.findall(r"job (\d+): running", text) for text in logs]
    assert all(ran), "both pilots must have taken jobs"
    all_ran = [int(j) for r in ran for j in r]
    assert len(all_ran) == N_JOBS and set(all_ran) == set(ids)

    db = sqlite3.connect(stub.server.settings.db)
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    assert statuses == {"Done": N_JOBS}
    matched = db.execute(
        "SELECT job_id, COUNT(*) FROM history WHERE status = 'Matched' GROUP BY job_id"
    ).fetchall()
    assert len(matched) == N_JOBS and all(count == 1 for _, count in matched)
    pilots_of_jobs = {row[0] for row in db.execute("SELECT DISTINCT pilot FROM jobs")}
    assert len(pilots_of_jobs) == 2
