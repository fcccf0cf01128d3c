"""The matcher stub under load: matching rate with mostly unfit work waiting, many pilots.

Both send what a pilot sends: its resource description as the pilot builds it
(``ResourceDescription.as_dict()`` of ``with_free``: a PilotReference of its own per
simulated pilot, a wall clock and CPUTime left that change at every request, disk,
benchmark...) and a request id per request.

(a) One keep-alive client (the standard library's: its own cost per request is a third
    of httpx's, so the figure is mostly the stub's), a new simulated pilot every
    MATCHES_PER_PILOT requests, asks for jobs while 10^5 jobs wait
    in 1000 requirement shapes, 900 of which do not fit its resource description (other
    sites, banned site, platform, a tag it lacks, too many processors or too much memory
    or CPU time); the unfit jobs are the older ones, so they sit ahead of the fitting
    ones in matching order. The baseline: a second stub with all 10^5 jobs (1000
    shapes) fitting. The two are measured in alternating rounds, each stub's rate the
    median of its rounds, so that both see the same load of the (shared) host; the
    stub's own CPU time per match is printed too. The submissions are timed and the
    stub's resident memory read after each.
(b) ``--pilots`` simulated pilots (threads in a few processes, each with its own
    keep-alive HTTP client) take ``--pilot-jobs`` short jobs: match, Running, Done. Every
    job must end Done exactly once (checked in the stub's database afterwards); if not,
    the bench exits 1 after its last line.

Last line: ``mixed_per_s=<x> fitting_per_s=<y> ratio=<x/y>``; goals: ratio >= 0.8 and
mixed_per_s >= 1000.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import itertools
import json
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubproc

from pilot.node.resources import ResourceDescription

SITE = "Bench.Site"
# A slot as the pilot describes it (pilot.node.resources.describe): the bench's pilots
# each get their own PilotReference, and every request offers what the slot has free
# (ResourceDescription.with_free), so WallClockTimeLeft and CPUTime shrink from one
# request to the next, as a real pilot's do.
SLOT = ResourceDescription(
    site=SITE,
    grid_ce="ce.bench.example",
    ce_queue="long",
    vo="vo",
    platform="Linux_x86_64_glibc-2.36",
    architecture="x86_64",
    number_of_processors=4,
    max_ram_mb=16000,
    cpu_time=200000,
    wall_clock_time_left=86400,
    disk_space_mb=40000,
    number_of_gpus=0,
    tags=("cvmfs:vo.example.org", "MultiProcessor"),
    required_tags=(),
    pilot_reference="",
    pilot_benchmark=10.0,
)
JOB_SECONDS = 37.0  # how much a simulated pilot's clock advances from request to request
MATCHES_PER_PILOT = 10  # requests one simulated pilot makes in (a) before the next starts


class SimulatedPilot:
    """One pilot's identity and the description it sends with each match request."""

    def __init__(self, n: int) -> None:
        self.stamp = f"bench-pilot-{n}-{uuid.uuid4().hex[:8]}"
        # like a batch system's job id: unique per pilot; disk differs per node too
        self.desc = dataclasses.replace(
            SLOT,
            pilot_reference=f"https://ce.bench.example:8443/{uuid.uuid4()}",
            disk_space_mb=SLOT.disk_space_mb + n % 997 if SLOT.disk_space_mb else None,
        )
        self.age = (n % 50) * 60.0  # seconds the pilot has run: pilots of different ages

    def body(self) -> str:
        """A match request as the pilot's stub backend sends it: this moment's free
        slot and a request id of its own. A real pilot asks again once its last job has
        run, so its wall clock left (hence CPUTime) differs at every request: the
        bench's pilots age JOB_SECONDS per request, however fast the bench goes."""
        self.age += JOB_SECONDS
        left = self.desc.wall_clock_time_left - self.age
        offer = self.desc.with_free(SLOT.number_of_processors, SLOT.max_ram_mb, left)
        return json.dumps(
            {"pilot": self.stamp, "resources": offer.as_dict(), "request_id": os.urandom(16).hex()}
        )


BATCH = 100  # JDL texts per submission request


def fitting_shape(i: int) -> str:
    """A requirement shape the bench resources satisfy; ``i`` makes it distinct."""
    site = ("", f'Site = "{SITE}";', f'Site = {{"Other.Site", "{SITE}"}};', 'Site = "ANY";')[i % 4]
    tags = ('Tags = {"cvmfs:vo.example.org"};', "")[i % 2]
    return (
        f"{site} {tags} CPUTime = {1000 + i}; NumberOfProcessors = {1 + i % 4};"
        f" MaxRAM = {1000 + 10 * (i % 100)}; Priority = {1 + i % 3};"
    )


def unfit_shape(i: int) -> str:
    """A requirement shape the bench resources do not satisfy, for one of seven reasons."""
    reason = (
        f'Site = "Other.Site{i % 50}";',
        f'BannedSites = {{"{SITE}"}};',
        'Platform = "Linux_aarch64_glibc-2.36";',
        'Tags = {"GPU"};',
        "NumberOfProcessors = 8;",
        "MaxRAM = 64000;",
        "CPUTime = 900000;",
    )[i % 7]
    cpu = "" if "CPUTime" in reason else f"CPUTime = {1000 + i};"
    return f"{reason} {cpu} Priority = {1 + i % 3};"


def jdl_text(shape: str, per_shape: int) -> str:
    return f'Executable = "/bin/true"; Arguments = "%s"; Parameters = {per_shape}; {shape}'


def submit_all(client: httpx.Client, texts: list[str]) -> int:
    count = 0
    for start in range(0, len(texts), BATCH):
        answer = client.post("/api/jobs/jdl", json=texts[start : start + BATCH], timeout=300)
        answer.raise_for_status()
        count += len(answer.json())
    return count


def cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used: the stub's own cost, whatever
    else the machine is running (wall-clock figures follow the host's load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


_PILOT_NUMBERS = itertools.count()


def match_rate(url: str, limit: int, seconds: float) -> tuple[int, float]:
    """Matches per second over ``limit`` matches or ``seconds``, whichever ends first."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
    headers = {"Content-Type": "application/json"}
    matched = 0
    pilot = SimulatedPilot(next(_PILOT_NUMBERS))
    start = time.perf_counter()
    try:
        while matched < limit and time.perf_counter() - start < seconds:
            if matched and matched % MATCHES_PER_PILOT == 0:
                pilot = SimulatedPilot(next(_PILOT_NUMBERS))
            body = pilot.body()
            conn.request("POST", "/api/jobs/match", body=body, headers=headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"match answered {answer.status} after {matched} matches")
            matched += 1
    finally:
        conn.close()
    return matched, matched / (time.perf_counter() - start)


def populate(name: str, tmp: Path, texts: list[str]) -> tuple[subprocess.Popen[str], str]:
    """A fresh stub holding the jobs of ``texts``; prints the submission's figures."""
    proc, url = stubproc.start_stub(tmp / f"{name}.db")
    try:
        with httpx.Client(base_url=url) as client:
            t0, c0 = time.perf_counter(), cpu_s(proc.pid)
            jobs = submit_all(client, texts)
            submit_s, submit_cpu = time.perf_counter() - t0, cpu_s(proc.pid) - c0
    except BaseException:
        stop(proc)
        raise
    print(
        f"{name}: {jobs} jobs submitted in {submit_s:.1f} s (goal < 10 s for 10^5;"
        f" stub CPU {submit_cpu:.1f} s), stub RSS {rss_mb(proc.pid):.0f} MB (goal < 300 MB)"
    )
    return proc, url


def compare(stubs: dict[str, tuple[subprocess.Popen[str], str]], args: Any) -> dict[str, float]:
    """Matching rate of each stub, measured in alternating rounds so that both see the
    same host load; per stub the median of its rounds."""
    rounds: dict[str, list[float]] = {name: [] for name in stubs}
    cpu: dict[str, float] = dict.fromkeys(stubs, 0.0)
    done: dict[str, int] = dict.fromkeys(stubs, 0)
    per_round = max(1, args.matches // args.rounds)
    for _ in range(args.rounds):
        for name, (proc, url) in stubs.items():
            c0 = cpu_s(proc.pid)
            matched, per_s = match_rate(url, per_round, args.seconds / args.rounds)
            cpu[name] += cpu_s(proc.pid) - c0
            done[name] += matched
            rounds[name].append(per_s)
    medians = {}
    for name, rates in rounds.items():
        medians[name] = statistics.median(rates)
        each = cpu[name] / max(done[name], 1) * 1e6
        print(
            f"{name}: {done[name]} matches, median {medians[name]:.0f} matches/s over"
            f" {len(rates)} rounds ({min(rates):.0f}-{max(rates):.0f}; stub CPU {each:.0f} us each)"
        )
    return medians


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- (b) many pilots ----------------------------------------------------------------------


def pilot_loop(url: str, number: int, claimed: list[int], deadline: float) -> None:
    """One simulated pilot: register, then match / Running / Done until nothing is left."""
    pilot = SimulatedPilot(number)
    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/api/pilots", json={"stamp": pilot.stamp, "info": {"site": SITE}})
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < deadline:
            answer = client.post("/api/jobs/match", content=pilot.body(), headers=headers)
            if answer.status_code == 204:
                return
            answer.raise_for_status()
            job = answer.json()
            claimed.append(int(job["job_id"]))
            headers = {"X-Job-Token": job["token"]}
            for status in ("Running", "Done"):
                update = {str(job["job_id"]): {repr(time.time()): {"Status": status}}}
                client.patch("/api/jobs/status", json=update, headers=headers).raise_for_status()


def pilot_process(url: str, first: int, count: int, deadline: float) -> list[int]:
    claimed: list[int] = []
    errors: list[BaseException] = []

    def run(number: int) -> None:
        try:
            pilot_loop(url, number, claimed, deadline)
        except BaseException as exc:  # reported by the parent
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(first, first + count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} pilot(s) failed, first: {errors[0]!r}")
    return claimed


def many_pilots(tmp: Path, pilots: int, jobs: int, procs: int, seconds: float) -> bool:
    """Run (b); whether every job ended Done exactly once."""
    proc, url = stubproc.start_stub(tmp / "pilots.db")
    db = tmp / "pilots.db"
    try:
        with httpx.Client(base_url=url) as client:
            per_shape = 1000
            shapes = [fitting_shape(i) for i in range(jobs // per_shape)]
            submit_all(client, [jdl_text(s, per_shape) for s in shapes])
        start, c0 = time.perf_counter(), cpu_s(proc.pid)
        deadline = time.monotonic() + seconds
        share = [pilots // procs + (1 if n < pilots % procs else 0) for n in range(procs)]
        firsts = [sum(share[:n]) for n in range(procs)]
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            results = pool.starmap(
                pilot_process, [(url, f, c, deadline) for f, c in zip(firsts, share, strict=True)]
            )
        wall, stub_cpu = time.perf_counter() - start, cpu_s(proc.pid) - c0
    finally:
        stop(proc)
    claimed = [job for part in results for job in part]
    ok, check = _done_once(db, claimed, jobs)
    print(
        f"pilots: {pilots} simulated pilots, {len(claimed)} of {jobs} jobs in {wall:.1f} s,"
        f" {len(claimed) / wall:.0f} matches/s (stub CPU {stub_cpu:.0f} s); {check}"
    )
    return ok


def _done_once(db: Path, claimed: list[int], jobs: int) -> tuple[bool, str]:
    conn = sqlite3.connect(db)
    try:
        done = dict(
            conn.execute(
                "SELECT job_id, COUNT(*) FROM history WHERE status = 'Done' GROUP BY job_id"
            ).fetchall()
        )
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    finally:
        conn.close()
    twice = len(claimed) - len(set(claimed))
    if twice or len(claimed) != jobs or len(done) != jobs or set(done.values()) != {1}:
        return False, f"NOT every job Done exactly once: claimed twice {twice}, statuses {statuses}"
    return True, "every job Done exactly once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="waiting jobs in (a)")
    parser.add_argument("--shapes", type=int, default=1000, help="requirement shapes in (a)")
    parser.add_argument("--matches", type=int, default=5000, help="matches measured in (a)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds in (a)")
    parser.add_argument("--seconds", type=float, default=60.0, help="cap on each stub's rounds")
    parser.add_argument("--pilots", type=int, default=200, help="0 skips (b)")
    parser.add_argument("--pilot-jobs", type=int, default=20_000)
    parser.add_argument("--pilot-procs", type=int, default=4, help="processes for the pilots")
    parser.add_argument("--pilot-seconds", type=float, default=600.0, help="cap on (b)")
    args = parser.parse_args()
    per_shape = args.jobs // args.shapes
    unfit = args.shapes * 9 // 10
    mixed = [jdl_text(unfit_shape(i), per_shape) for i in range(unfit)]
    mixed += [jdl_text(fitting_shape(i), per_shape) for i in range(args.shapes - unfit)]
    fitting = [jdl_text(fitting_shape(i), per_shape) for i in range(args.shapes)]
    with tempfile.TemporaryDirectory(prefix="bench-matcher-") as tmp:
        stubs = {}
        try:
            for name, texts in (("mixed", mixed), ("fitting", fitting)):
                stubs[name] = populate(name, Path(tmp), texts)
            rates = compare(stubs, args)
        finally:
            for proc, _ in stubs.values():
                stop(proc)
        all_done = not args.pilots or many_pilots(
            Path(tmp), args.pilots, args.pilot_jobs, args.pilot_procs, args.pilot_seconds
        )
    x, y = rates["mixed"], rates["fitting"]
    print(f"mixed_per_s={x:.0f} fitting_per_s={y:.0f} ratio={x / y:.2f}")
    if not all_done:
        sys.exit(1)  # (b) failed: some job not Done, or Done twice


if __name__ == "__main__":
    main()
