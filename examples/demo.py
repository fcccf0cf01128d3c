"""End-to-end demo: a stub on a free loopback port, the two guide jobs, one pilot.

Run with ``make demo``. Exits 0 only if both jobs are Done and their output came back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
JOBS = (HERE / "simple.jdl", HERE / "sandbox.jdl")


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def stub(url: str, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "pilot-stub"), "--server", url, *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pilot-stub {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pilot-demo-") as tmp_name:
        tmp = Path(tmp_name)
        server = subprocess.Popen(
            [str(BIN / "pilot-stub"), "serve", "--db", str(tmp / "stub.db")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            return demo(server, tmp)
        finally:
            server.terminate()
            server.wait(timeout=10)


def demo(server: subprocess.Popen[str], tmp: Path) -> int:
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if not url.startswith("http"):
        print("the stub did not start", file=sys.stderr)
        return 1
    names = ", ".join(j.name for j in JOBS)
    banner(f"matcher stub at {url} (Job Monitor in a browser: {url}/); submitting {names}")
    submitted = json.loads(stub(url, "submit", "--json", *map(str, JOBS)))
    ids = [str(i) for row in submitted for i in row["JobID"]]
    print("job ids:", " ".join(ids))

    banner("running one pilot until the queue is empty")
    pilot = subprocess.run(
        [
            str(BIN / "pilot"),
            "run",
            "--server",
            url,
            "--site",
            "DEMO.Local.org",
            "--work-dir",
            str(tmp / "work"),
            "--idle-timeout",
            "2",
        ],
        text=True,
    )
    print(f"pilot exited with {pilot.returncode}")

    ok = pilot.returncode == 0
    for job_id in ids:
        banner(f"job {job_id}")
        print(stub(url, "status", job_id), end="")
        (job,) = json.loads(stub(url, "status", "--json", job_id))
        print(stub(url, "logging-info", job_id), end="")
        stub(url, "get-output", job_id, "--dir", str(tmp / "out"))
        stdout = tmp / "out" / job_id / "StdOut"
        if stdout.is_file():
            print(f"--- StdOut of job {job_id}:")
            print(stdout.read_text(), end="")
        ok = ok and job["status"] == "Done" and stdout.is_file() and stdout.stat().st_size > 0
    banner("demo " + ("succeeded: both jobs Done, output retrieved" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
