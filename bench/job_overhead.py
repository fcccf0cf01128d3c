"""Per-job overhead of the pilot against a minimal baseline, measured in the same run.

N tiny jobs (``/bin/true``, a 1 KiB input sandbox, ``StdOut`` in the output sandbox) go
through one pilot against the stub on loopback. Then N more go through a baseline: the
same HTTP calls in a plain httpx loop plus ``subprocess.run``, none of the pilot's
machinery. Last line: ``overhead_ms=<pilot ms per job> ratio=<pilot / baseline>``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubproc

BIN = Path(sys.executable).parent
RES = {"Site": "Bench.Site", "CPUTime": 10**9, "NumberOfProcessors": 1, "MaxRAM": 4000}


def start_stub(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    return stubproc.start_stub(tmp / "bench.db")


def submit(url: str, tmp: Path, n: int) -> None:
    (tmp / "input.dat").write_bytes(os.urandom(1024))
    (tmp / "job.jdl").write_text(
        f'Executable = "/bin/true"; InputSandbox = {{"input.dat"}}; StdOutput = "StdOut";'
        f' OutputSandbox = {{"StdOut"}}; Parameters = {n};'
    )
    subprocess.run(
        [str(BIN / "pilot-stub"), "--server", url, "submit", str(tmp / "job.jdl")],
        check=True,
        capture_output=True,
    )


def run_pilot(url: str, tmp: Path, n: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "pilot"),
            "run",
            "--server",
            url,
            "--max-jobs",
            str(n),
            "--idle-timeout",
            "5",
            "--work-dir",
            str(tmp / "work"),
            "--disable-check",
            "cpu",
            "--log-level",
            "WARNING",
        ],
        check=True,
    )
    return time.perf_counter() - start


def _tiny_output() -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("StdOut"), io.BytesIO(b""))
    return buf.getvalue()


def baseline(url: str, tmp: Path, n: int) -> float:
    """The same calls per job, in the plainest possible loop."""
    work = tmp / "baseline"
    work.mkdir()
    out = _tiny_output()
    out_sha = hashlib.sha256(out).hexdigest()
    start = time.perf_counter()
    with httpx.Client(base_url=url) as http:
        for _ in range(n):
            job = http.post("/api/jobs/match", json={"pilot": "baseline", "resources": RES}).json()
            jid, hdr = str(job["job_id"]), {"X-Job-Token": job["token"]}

            def status(s: str, m: str, jid: str = jid, hdr: dict[str, str] = hdr) -> None:
                body = {jid: {repr(time.time()): {"Status": s, "MinorStatus": m}}}
                http.patch("/api/jobs/status", json=body, headers=hdr).raise_for_status()

            status("Running", "Downloading InputSandbox")
            sha = job["jdl"].split("SB:")[1][:64]
            (work / "sb").write_bytes(http.get(f"/api/sandboxes/{sha}").content)
            status("Running", "Application")
            subprocess.run(["/bin/true"], cwd=work, check=True)
            status("Completing", "Uploading Output Sandbox")
            http.put(f"/api/sandboxes/{out_sha}", content=out).raise_for_status()
            http.patch(
                f"/api/jobs/{jid}/sandbox/output", json={"sha256": out_sha}, headers=hdr
            ).raise_for_status()
            status("Done", "Execution Complete")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=200, help="jobs per side (default 200)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as name:
        tmp = Path(name)
        proc, url = start_stub(tmp)
        try:
            submit(url, tmp, n)
            pilot_s = run_pilot(url, tmp, n)
            submit(url, tmp, n)
            base_s = baseline(url, tmp, n)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    pilot_ms, base_ms = pilot_s / n * 1000, base_s / n * 1000
    print(f"pilot:    {n / pilot_s:7.1f} jobs/s  {pilot_ms:7.2f} ms/job  (start-up included)")
    print(
        f"baseline: {n / base_s:7.1f} jobs/s  {base_ms:7.2f} ms/job  (httpx loop + subprocess.run)"
    )
    print(f"overhead_ms={pilot_ms:.2f} ratio={pilot_ms / base_ms:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
