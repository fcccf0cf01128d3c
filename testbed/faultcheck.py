"""What the fault tests and ``bench/faults.py`` assert, from the stub's own records and
from the execution log the payloads write (``testbed/recorder.py``)."""

from __future__ import annotations

import collections
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pilot.errors import PilotError
from server_stub.userclient import UserClient

PYTHON = sys.executable
RECORDER = Path(__file__).resolve().parent / "recorder.py"

UNFINISHED = ("Received", "Waiting", "Matched", "Running", "Completing", "Stalled")


def recorder_jdl(
    log: Path,
    seconds: float,
    *,
    extra: str = "",
    python: str = PYTHON,
    script: str | Path = RECORDER,
) -> str:
    """A job that appends its id to ``log``, sleeps, and prints ``job <id> done``
    (``script``: the recorder as the payload finds it, e.g. in its input sandbox)."""
    args = f"{script} rec {log} {seconds}"
    return (
        f'Executable = "{python}"; Arguments = "{args}"; StdOutput = "out"; StdError = "err";'
        f' OutputSandbox = {{"out", "err"}}; {extra}'
    )


@dataclass(frozen=True)
class Verdict:
    jobs: int
    done: int  # jobs whose last status is Done
    done_twice: int  # jobs with more than one Done in their history
    executed_twice: int  # jobs the execution log names more than once
    never_executed: int
    lost_outputs: int  # Done jobs whose output cannot be fetched or is wrong
    stranded: int  # jobs left in a non-final status
    statuses: dict[str, int]

    @property
    def perfect(self) -> bool:
        return (
            self.done == self.jobs
            and not self.done_twice
            and not self.executed_twice
            and not self.never_executed
            and not self.lost_outputs
            and not self.stranded
        )


def done_counts(db: Path) -> dict[int, int]:
    """How many Done rows each job has in the stub's history."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT jobs.id, COUNT(history.job_id) FROM jobs LEFT JOIN history"
            " ON history.job_id = jobs.id AND history.status = 'Done' GROUP BY jobs.id"
        ).fetchall()
    finally:
        conn.close()
    return {int(job): int(count) for job, count in rows}


def executions(log: Path) -> collections.Counter[str]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in log.read_text().splitlines() if line)


def judge(client: UserClient, db: Path, jobs: list[int], log: Path) -> Verdict:
    records = {j["job_id"]: j for j in client.jobs()}
    statuses = collections.Counter(str(records[j]["status"]) for j in jobs)
    counts = done_counts(db)
    ran = executions(log)
    lost = 0
    with tempfile.TemporaryDirectory() as tmp:
        for job in jobs:
            if records[job]["status"] != "Done":
                continue
            try:
                client.get_output(job, Path(tmp) / str(job))
                text = (Path(tmp) / str(job) / "out").read_text()
            except (PilotError, OSError):
                lost += 1
                continue
            lost += f"job {job} done" not in text
    return Verdict(
        jobs=len(jobs),
        done=statuses.get("Done", 0),
        done_twice=sum(counts.get(j, 0) > 1 for j in jobs),
        executed_twice=sum(ran[str(j)] > 1 for j in jobs),
        never_executed=sum(ran[str(j)] == 0 for j in jobs),
        lost_outputs=lost,
        stranded=sum(statuses.get(s, 0) for s in UNFINISHED),
        statuses=dict(statuses),
    )


def error_lines(text: str) -> list[str]:
    """Lines a pilot logged at ERROR level (or worse)."""
    return [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line]
