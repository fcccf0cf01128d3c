"""What a kill within 30 s costs the server: the light command poll against heartbeats.

A stub process holds 400 running jobs (100 pilots of 4 jobs). We send it 2000
heartbeats (one job each, the write a heartbeat makes) and 2000 command polls (one
pilot's 4 jobs each, a read), and take the stub's CPU time for each from /proc. Then the
cost per running job and hour at the defaults: a heartbeat every 300 s per job plus a
poll every 20 s per pilot of 4 jobs, against the alternative of a heartbeat every 20 s.
Last line: ``poll_ms=<CPU ms/request> heartbeat_ms=<CPU ms/request> ratio=<poll/heartbeat>``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stubproc import start_stub  # noqa: E402

PILOTS = 100
JOBS_PER_PILOT = 4
CALLS = 2000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        stub, url = start_stub(Path(tmp) / "stub.db")
        try:
            with httpx.Client(base_url=url, timeout=30) as http:
                jobs = PILOTS * JOBS_PER_PILOT
                texts = ['Executable = "/bin/true";'] * jobs
                http.post("/api/jobs/jdl", json=texts).raise_for_status()
                held: list[tuple[str, int, str]] = []
                for p in range(PILOTS):
                    for _ in range(JOBS_PER_PILOT):
                        body = {"pilot": f"pilot-{p}", "resources": {}}
                        answer = http.post("/api/jobs/match", json=body).json()
                        held.append((f"pilot-{p}", answer["job_id"], answer["token"]))

                def heartbeats() -> None:
                    for i in range(CALLS):
                        _, job, token = held[i % len(held)]
                        http.patch(
                            "/api/jobs/heartbeat",
                            json={str(job): {"CPUConsumed": i, "MemoryUsed": 100}},
                            headers={"X-Job-Token": token},
                        ).raise_for_status()

                def polls() -> None:
                    for i in range(CALLS):
                        pilot = f"pilot-{i % PILOTS}"
                        ids = [j for p, j, _ in held if p == pilot]
                        body = {"pilot": pilot, "jobs": ids}
                        http.post("/api/jobs/commands", json=body).raise_for_status()

                costs = {}
                for name, run in (("heartbeat", heartbeats), ("poll", polls)) * 2:
                    before, wall = cpu_seconds(stub.pid), time.monotonic()
                    run()
                    cpu = cpu_seconds(stub.pid) - before
                    costs[name] = cpu / CALLS * 1000  # the second round counts (warm)
                    wall = time.monotonic() - wall
                    print(f"{name}: {costs[name]:.2f} ms CPU/request ({CALLS / wall:.0f}/s)")
        finally:
            stub.terminate()
            stub.wait(10)
    beat, poll = costs["heartbeat"], costs["poll"]
    per_job_hour_now = 3600 / 300 * beat + 3600 / 20 * poll / JOBS_PER_PILOT
    per_job_hour_alt = 3600 / 20 * beat
    print(
        f"server CPU per running job and hour: {per_job_hour_now:.0f} ms with the defaults"
        f" (heartbeat 300 s, poll 20 s per pilot of {JOBS_PER_PILOT} jobs);"
        f" {per_job_hour_alt:.0f} ms with a 20 s heartbeat instead"
    )
    print(f"poll_ms={poll:.2f} heartbeat_ms={beat:.2f} ratio={poll / beat:.2f}")


if __name__ == "__main__":
    main()
