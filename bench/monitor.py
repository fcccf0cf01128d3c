"""Job Monitor pages at 10^5 jobs, against listing the jobs in Python, in the same run.

A stub database is filled with N jobs (default 100 000: 20 sites, 50 owners, all
statuses, varied names and times), then ``pilot-stub serve`` runs on it and each monitor
page below is fetched ``--repeat`` times over HTTP (median ms). The baseline is what the
stub offered before the monitor: ``GET /api/jobs?status=S`` (every job of that status as
JSON), filtered, sorted and cut to one page in Python, for the same page as
``/?status=Running&site=...&sort=updated``.

Goal: a page in under 100 ms at 10^5 jobs on the 2-core development machine (sorting
deep into the list by minor status or update time, which pilots update and which have
no index of their own, may take longer: see the README's design notes).
Last line: ``worst_page_ms=<x> python_page_ms=<y> ratio=<y/x>``.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import stubproc

from server_stub.store import Store

STATUSES = ("Waiting", "Running", "Done", "Failed", "Killed", "Matched", "Completing")
MINORS = ("Pilot Agent Submission", "Application", "Execution Complete", "Killed by user")


def fill(db: Path, n: int) -> None:
    Store(db).ensure_monitor_indexes()  # the schema and the monitor's indexes
    conn = sqlite3.connect(db)
    jdl_text = (  # about the size of a real job's JDL and requirements
        '[\n    JobName = "analysis";\n    Executable = "run.sh";\n    Arguments = "--events 1000'
        ' --seed 42";\n    InputSandbox = {"SB:' + "0" * 64 + '"};\n    StdOutput = "std.out";'
        '\n    StdError = "std.err";\n    OutputSandbox = {"std.out", "std.err", "*.log"};\n'
        '    CPUTime = 86400;\n    Site = {"LCG.Site03.org", "LCG.Site04.org"};\n]\n'
    )
    requirements = (
        '{"sites": ["LCG.Site03.org", "LCG.Site04.org"], "banned_sites": [], "platforms": [],'
        ' "grid_ces": [], "tags": [], "cpu_time": 86400, "min_processors": 1,'
        ' "max_ram_mb": null, "vo": null, "whole_node": false}'
    )
    rows = (
        (
            jdl_text,
            f"/DC=org/CN=user{i % 50:02d}",
            STATUSES[i % 7],
            MINORS[i % 4],
            f"exit code {i % 3}" if i % 4 == 2 else "",
            requirements,
            1.7e9 + i,
            1.7e9 + (i * 7919) % n,
            f"LCG.Site{i % 20:02d}.org",
            f"analysis-{(i * 104729) % n:06d}",
            f"pilot-{i % 200}",
        )
        for i in range(n)
    )
    with conn:
        conn.executemany(
            "INSERT INTO jobs (jdl, owner, status, minor, application, requirements,"
            " submitted, updated, site, name, pilot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("ANALYZE")
    conn.close()


def median_ms(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    if args.jobs < 1000 or args.repeat < 1:
        parser.error("--jobs must be at least 1000 and --repeat at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        db = Path(tmp) / "stub.db"
        start = time.perf_counter()
        fill(db, args.jobs)
        print(f"filled {args.jobs} jobs in {time.perf_counter() - start:.1f} s")
        proc, url = stubproc.start_stub(db)
        try:
            with httpx.Client(base_url=url, timeout=120) as web:
                web.get("/")  # session cookie, warm caches
                last = args.jobs // 50
                pages = [
                    "/",
                    f"/?page={last}",
                    "/?status=Running",
                    "/?status=Running&site=LCG.Site03.org&sort=updated",
                    "/?owner=%2FDC%3Dorg%2FCN%3Duser07&sort=submitted&dir=asc",
                    "/?name=042",
                    "/?sort=updated",
                    f"/?sort=application&page={last // 2}",
                    "/?minor=Killed&sort=name",
                    f"/?sort=name&dir=asc&page={last // 2}",
                    f"/jobs/{args.jobs // 2}",
                    "/pilots",
                ]
                worst = 0.0
                for page in pages:
                    answer = web.get(page)
                    assert answer.status_code == 200, (page, answer.status_code)
                    ms = median_ms(lambda p=page: web.get(p), args.repeat)  # type: ignore[misc]
                    worst = max(worst, ms)
                    print(f"{ms:8.1f} ms  {page}")

                def python_page() -> list[dict[str, object]]:
                    jobs = web.get("/api/jobs", params={"status": "Running"}).json()
                    mine = [j for j in jobs if j["site"] == "LCG.Site03.org"]
                    mine.sort(key=lambda j: (j["updated"], j["job_id"]), reverse=True)
                    return mine[:50]

                python_ms = median_ms(python_page, max(3, args.repeat // 3))
                print(f"{python_ms:8.1f} ms  baseline: /api/jobs?status=Running + Python")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"worst_page_ms={worst:.1f} python_page_ms={python_ms:.1f} ratio={python_ms / worst:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
