"""The pilot's own cost while it supervises a long, idle job, against a bare parent.

One job (``sleep``) runs under a real pilot against the stub on loopback, with the
pilot's default watchdog settings (sample every 5 s, heartbeat every 300 s) unless
overridden. Over the same window, a baseline parent, a plain Python process that
started ``sleep`` with ``subprocess.run`` and waits for it, is measured side by side.
Both figures are the parent's own CPU (children excluded) as a percentage of one core,
and its resident memory. The last line: ``pilot_cpu_pct=.. pilot_rss_mb=..
baseline_cpu_pct=.. baseline_rss_mb=..``; the exit code is 1 when the pilot is over
the budget (1 % of a core, 60 MB).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubproc

BIN = Path(sys.executable).parent
CPU_BUDGET_PCT = 1.0
RSS_BUDGET_MB = 60.0


def start_stub(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    return stubproc.start_stub(tmp / "bench.db")


def submit_sleep(url: str, seconds: float) -> int:
    jdl = f'Executable = "/bin/sleep"; Arguments = "{seconds:.0f}";'
    with httpx.Client(base_url=url) as http:
        answer = http.post("/api/jobs/jdl", json=[jdl])
        answer.raise_for_status()
        return int(answer.json()[0]["JobID"])


def wait_running(url: str, job: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url) as http:
        while time.monotonic() < deadline:
            info = http.get(f"/api/jobs/{job}").json()
            if info["status"] == "Running" and info["minor_status"] == "Application":
                return
            time.sleep(0.2)
    raise SystemExit(f"job {job} did not start within {timeout:.0f} s")


def own_cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def measure(procs: dict[str, psutil.Process], window: float) -> dict[str, tuple[float, float]]:
    """Each process's CPU (% of a core) over ``window`` seconds and its RSS (MB) at the end."""
    before = {name: own_cpu(p) for name, p in procs.items()}
    start = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - start
    return {
        name: (
            (own_cpu(p) - before[name]) / elapsed * 100,
            p.memory_info().rss / 2**20,
        )
        for name, p in procs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    parser.add_argument("--settle", type=float, default=3.0, help="wait after the job starts")
    parser.add_argument("pilot_args", nargs="*", help="extra pilot flags (after --)")
    args = parser.parse_args()
    job_seconds = args.seconds + args.settle + 30
    with tempfile.TemporaryDirectory(prefix="bench-supervision-") as name:
        tmp = Path(name)
        stub, url = start_stub(tmp)
        pilot = baseline = None
        try:
            job = submit_sleep(url, job_seconds)
            pilot = subprocess.Popen(
                [str(BIN / "pilot"), "run", "--server", url, "--work-dir", str(tmp / "work"),
                 "--idle-timeout", "1", "--disable-check", "cpu", "--max-jobs", "1",
                 "--log-level", "WARNING", *args.pilot_args],
            )  # fmt: skip
            wait_running(url, job)
            code = f"import subprocess; subprocess.run(['sleep', '{job_seconds:.0f}'])"
            baseline = subprocess.Popen([sys.executable, "-c", code])
            time.sleep(args.settle)
            figures = measure(
                {"pilot": psutil.Process(pilot.pid), "baseline": psutil.Process(baseline.pid)},
                args.seconds,
            )
        finally:
            for proc in (pilot, baseline):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
            stub.terminate()
            stub.wait(10)
    (p_cpu, p_rss), (b_cpu, b_rss) = figures["pilot"], figures["baseline"]
    print(f"window {args.seconds:.0f} s, one idle job, pilot flags {args.pilot_args or 'default'}")
    print(f"pilot:    CPU {p_cpu:6.3f} % of a core   RSS {p_rss:6.1f} MB")
    print(
        f"baseline: CPU {b_cpu:6.3f} % of a core   RSS {b_rss:6.1f} MB  (python + subprocess.run)"
    )
    print(json.dumps({"budget": {"cpu_pct": CPU_BUDGET_PCT, "rss_mb": RSS_BUDGET_MB}}))
    print(
        f"pilot_cpu_pct={p_cpu:.3f} pilot_rss_mb={p_rss:.1f}"
        f" baseline_cpu_pct={b_cpu:.3f} baseline_rss_mb={b_rss:.1f}"
    )
    return 0 if p_cpu < CPU_BUDGET_PCT and p_rss < RSS_BUDGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
