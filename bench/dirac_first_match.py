"""Time from pilot start to the Matcher's reply, against a real DIRAC server.

Starts the test DIRAC server (testbed/dirac_server; the DIRAC venv is built once and cached),
submits one job per round with ``dirac-wms-job-submit``, then measures from spawning
``pilot run`` until the pilot logs that the job was matched. In the same run, and as the
baseline, it times a fresh Python process that imports DIRAC and asks the same Matcher
with DIRAC's own ``MatcherClient`` (what any DIRAC-based pilot must do at least). For
scale: DIRAC's own pilot needs about 11 s with DIRAC preinstalled (measured on this kind
of machine; not re-measured here, it needs a full DIRAC client installation per node).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testbed.dirac_server.fixture import DiracServer, describe  # noqa: E402
from testbed.dirac_server.harness import Harness, Layout, default_venv  # noqa: E402
from testbed.dirac_server.jobs import env_for, pilot_config, submit, wait_for  # noqa: E402

BIN = Path(sys.executable).parent

DIRAC_MATCH = """
import sys, time
t0 = float(sys.argv[1])
import DIRAC
DIRAC.initialize(require_auth=False)
from DIRAC.WorkloadManagementSystem.Client.MatcherClient import MatcherClient
res = MatcherClient(url=sys.argv[2]).requestJob(eval(sys.argv[3]))
print(time.time() - t0, res.get("OK"), flush=True)
"""


def submit_waiting(server: DiracServer, workdir: Path, tag: str) -> None:
    """Submit a job carrying ``tag`` and wait until the optimizers made it Waiting."""
    wait_for(server, submit(server, workdir, tag), "Waiting")


def pilot_first_match(server: DiracServer, workdir: Path, tag: str) -> float:
    conf = pilot_config(server, workdir, tag, idle_timeout=1, disable=())
    env = {**os.environ, **env_for(server)}
    start = time.perf_counter()
    pilot = subprocess.Popen(
        [
            str(BIN / "pilot"),
            "run",
            "--config",
            str(conf),
            "--server",
            server.urls["matcher"],
            "--work-dir",
            str(workdir / "work"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=workdir,
    )
    assert pilot.stderr is not None
    matched = None
    for line in pilot.stderr:
        if matched is None and " matched: " in line:
            matched = time.perf_counter() - start
    pilot.wait()
    if matched is None:
        raise SystemExit("the pilot never got its job")
    return matched


def dirac_client_match(server: DiracServer, tag: str) -> float:
    resources = {
        "Site": server.site,
        "GridCE": server.ce,
        "CEQueue": server.queue,
        "VirtualOrganization": server.vo,
        "Tag": [tag],
        "RequiredTag": [tag],
        "CPUTime": 100000,
        "NumberOfProcessors": 1,
        "ReleaseVersion": "9.1.22",
    }
    out = subprocess.run(
        [
            str(server.venv / "bin" / "python"),
            "-c",
            DIRAC_MATCH,
            repr(time.time()),
            server.urls["matcher"],
            repr(resources),
        ],
        capture_output=True,
        text=True,
        env=dict(server.env) | {"X509_USER_PROXY": str(server.pilot_proxy)},  # as our pilot
        check=True,
    )
    return float(out.stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="bench-dirac-") as name:
        tmp = Path(name)
        harness = Harness(Layout(tmp / "server", default_venv()))
        try:
            print("starting the DIRAC server (first time: builds its venv) ...", flush=True)
            harness.setup()
            harness.start()
            server = describe(harness)
            ours, theirs = [], []
            for n in range(rounds):
                tag = f"b{uuid.uuid4().hex[:8]}"
                submit_waiting(server, tmp / f"r{n}", tag)
                ours.append(pilot_first_match(server, tmp / f"r{n}", tag))
                submit_waiting(server, tmp / f"d{n}", tag)
                theirs.append(dirac_client_match(server, tag))
        finally:
            harness.stop()
    mine, base = statistics.median(ours), statistics.median(theirs)
    runs = {
        "pilot-agent, start to Matcher reply": ours,
        "DIRAC MatcherClient, fresh process": theirs,
    }
    for what, times in runs.items():
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"{what:<36} median {statistics.median(times):.2f} s  ({each})")
    print("DIRAC's own pilot with DIRAC preinstalled: about 11 s (reference figure)")
    print(f"first_match_s={mine:.2f} ratio_vs_dirac_client={mine / base:.2f} goal=0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
