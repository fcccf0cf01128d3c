"""1 GiB sandbox round trip through the stub: the pilot's transfer code against curl.

The pilot side runs the very calls a pilot makes for sandboxes (``HttpClient.upload``
of a stored sandbox, ``HttpClient.download`` with its sha256 check) in a child process
whose RSS the parent samples; curl moves the same bytes to the same stub in the same
run. Prints throughput of both, the ratio, and the pilot's RSS growth.
Goal: RSS growth <= 50 MB, throughput >= 70 % of curl's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubproc

BIN = Path(sys.executable).parent

CHILD = r"""
import json, sys, time
from pathlib import Path
from pilot.backends.stub import HttpClient, RetryPolicy
url, src, dest, sha = sys.argv[1:5]
print("ready", flush=True)
sys.stdin.readline()
with HttpClient(url, retry=RetryPolicy(attempts=1), timeout=600) as http:
    t0 = time.perf_counter()
    http.upload(f"/api/sandboxes/{sha}", Path(src))
    t1 = time.perf_counter()
    http.download(f"/api/sandboxes/{sha}", Path(dest), sha)
    t2 = time.perf_counter()
print(json.dumps({"upload": t1 - t0, "download": t2 - t1}), flush=True)
"""


def make_file(path: Path, size: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def start_stub(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    (tmp / "db").mkdir(exist_ok=True)  # the stub wants its database's directory to exist
    return stubproc.start_stub(tmp / "db" / "s.db")


def forget(tmp: Path, sha: str) -> None:
    """Remove the stored copy so the next upload is really stored again."""
    (tmp / "db" / "s.db.sandboxes" / sha[:2] / sha).unlink(missing_ok=True)


def run_pilot_side(url: str, src: Path, dest: Path, sha: str) -> tuple[dict[str, float], int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(src), str(dest), sha],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    child.stdout.readline()  # imports done
    proc = psutil.Process(child.pid)
    base = proc.memory_info().rss
    peak = base
    child.stdin.write("go\n")
    child.stdin.flush()
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    result = json.loads(child.stdout.readline())
    child.wait()
    return result, peak - base


def run_curl(url: str, src: Path, dest: Path, sha: str) -> dict[str, float]:
    curl = shutil.which("curl")
    if curl is None:
        raise SystemExit("needs curl (apt-get install curl)")
    t0 = time.perf_counter()
    subprocess.run(
        [
            curl,
            "-sSf",
            "-T",
            str(src),
            "-H",
            "Content-Type: application/octet-stream",
            f"{url}/api/sandboxes/{sha}",
            "-o",
            "/dev/null",
        ],
        check=True,
    )
    t1 = time.perf_counter()
    subprocess.run([curl, "-sSf", "-o", str(dest), f"{url}/api/sandboxes/{sha}"], check=True)
    t2 = time.perf_counter()
    return {"upload": t1 - t0, "download": t2 - t1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=1024, help="sandbox size (default 1024 MiB)")
    size = parser.parse_args().mib << 20
    with tempfile.TemporaryDirectory(
        prefix="bench-sandbox-", dir=os.environ.get("BENCH_TMP")
    ) as name:
        tmp = Path(name)
        src = tmp / "sandbox.bin"
        print(f"writing a {size >> 20} MiB test sandbox ...", flush=True)
        sha = make_file(src, size)
        stub, url = start_stub(tmp)
        try:
            curl = run_curl(url, src, tmp / "curl.out", sha)
            (tmp / "curl.out").unlink()
            forget(tmp, sha)
            pilot, rss_growth = run_pilot_side(url, src, tmp / "pilot.out", sha)
        finally:
            stub.terminate()
            stub.wait(timeout=30)
    mib = size / 2**20
    curl_rate = 2 * mib / (curl["upload"] + curl["download"])
    pilot_rate = 2 * mib / (pilot["upload"] + pilot["download"])
    for who, t in (("curl", curl), ("pilot", pilot)):
        up, down = mib / t["upload"], mib / t["download"]
        print(f"{who:>5}: upload {up:7.1f} MiB/s, download {down:7.1f} MiB/s")
    print(f"pilot RSS growth during the round trip: {rss_growth / 2**20:.1f} MB (goal <= 50)")
    print(
        f"throughput_ratio={pilot_rate / curl_rate:.2f} (goal >= 0.70) "
        f"rss_growth_mb={rss_growth / 2**20:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
