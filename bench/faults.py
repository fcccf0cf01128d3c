"""200 jobs, 4 pilots, through a fault-injecting proxy: 10 % of connections reset and a
30 s blackout that also cuts open connections; against the same run without faults.

The stub runs as its own process; the proxy (testbed/faultproxy.py) runs here. Each job
appends its id to an execution log, sleeps 0.5 s and prints its id, which comes back in
its output sandbox. Wall time runs from the pilots' start until every job is final on
the stub. Last line:

    jobs=<n> done=<n> executed_twice=<n> lost_outputs=<n> stranded=<n> wall_s=<s> ratio=<r>

with ratio = wall with faults / wall without, both measured in this run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.stubproc import BIN, start_stub  # noqa: E402
from server_stub.cli import submit_file  # noqa: E402
from server_stub.userclient import UserClient  # noqa: E402
from testbed.faultcheck import error_lines, judge, recorder_jdl  # noqa: E402
from testbed.faultproxy import FaultProxy, Faults  # noqa: E402

JOBS = 200
PILOTS = 4
CORES = 2  # per pilot
JOB_SECONDS = 0.5
BLACKOUT_S = 30.0
BLACKOUT_AFTER_S = 4.0  # into the faulty run
IDLE_TIMEOUT_S = 45.0  # longer than the blackout: idle pilots wait it out
FINAL = ("Done", "Failed", "Killed", "Deleted")


def one_run(folder: Path, faults: bool) -> tuple[float, str, list[int | None], str]:
    folder.mkdir(parents=True)
    stub, url = start_stub(folder / "stub.db")
    client = UserClient(url)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), max_seconds=900).start()
    pilots: list[subprocess.Popen[bytes]] = []
    try:  # whatever goes wrong, no stub or pilot is left running
        return _measure(folder, faults, client, proxy, pilots)
    finally:
        for pilot in pilots:
            if pilot.poll() is None:
                pilot.send_signal(signal.SIGKILL)
                pilot.wait()
        proxy.stop()
        client.close()
        stub.terminate()
        stub.wait(10)


def _measure(
    folder: Path,
    faults: bool,
    client: UserClient,
    proxy: FaultProxy,
    pilots: list[subprocess.Popen[bytes]],
) -> tuple[float, str, list[int | None], str]:
    if faults:
        proxy.set_faults(Faults(reset_fraction=0.1, reset_after_max=3000, seed=12))
    log = folder / "executions.log"
    jdl = folder / "jobs.jdl"
    jdl.write_text(recorder_jdl(log, JOB_SECONDS, extra=f"Parameters = {JOBS};"))
    jobs = submit_file(client, jdl)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    start = time.monotonic()
    for i in range(PILOTS):
        work = folder / f"p{i}"
        work.mkdir()
        pilots.append(
            subprocess.Popen(
                [str(BIN / "pilot"), "run", "--server", proxy.url, "--work-dir", str(work / "w"),
                 "--cores", str(CORES), "--idle-timeout", str(IDLE_TIMEOUT_S),
                 "--disable-check", "cpu"],
                stdout=(work / "pilot.log").open("w"),
                stderr=subprocess.STDOUT,
                env=env,
            )
        )  # fmt: skip
    if faults:
        threading.Timer(BLACKOUT_AFTER_S, proxy.blackout, (True,)).start()
        threading.Timer(BLACKOUT_AFTER_S + BLACKOUT_S, proxy.blackout, (False,)).start()
    deadline = start + 600
    wall = float("nan")
    while time.monotonic() < deadline:
        if all(j["status"] in FINAL for j in client.jobs()):
            wall = time.monotonic() - start
            break
        time.sleep(0.5)
    codes: list[int | None] = []
    for pilot in pilots:
        try:
            codes.append(pilot.wait(IDLE_TIMEOUT_S + 60))
        except subprocess.TimeoutExpired:
            pilot.send_signal(signal.SIGKILL)
            pilot.wait()
            codes.append(None)
    verdict = judge(client, folder / "stub.db", jobs, log)
    logs = [(folder / f"p{i}" / "pilot.log").read_text() for i in range(PILOTS)]
    errors = sum(len(error_lines(text)) for text in logs)
    line = (
        f"jobs={verdict.jobs} done={verdict.done} executed_twice={verdict.executed_twice}"
        f" lost_outputs={verdict.lost_outputs} stranded={verdict.stranded}"
    )
    detail = (
        f"done twice {verdict.done_twice}, never executed {verdict.never_executed},"
        f" statuses {verdict.statuses}; proxy: {proxy.connections} connections,"
        f" {proxy.resets} reset, {proxy.refused} refused; pilot ERROR lines {errors}"
    )
    return wall, line, codes, detail


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        base_wall, base_line, base_codes, base_detail = one_run(Path(tmp) / "clean", False)
        print(f"without faults: {base_line} wall_s={base_wall:.1f} pilots exit {base_codes}")
        print(f"  {base_detail}")
        wall, line, codes, detail = one_run(Path(tmp) / "faulty", True)
        print(f"with 10 % resets and a {BLACKOUT_S:.0f} s blackout: pilots exit {codes}")
        print(f"  {detail}")
        print(f"{line} wall_s={wall:.1f} ratio={wall / base_wall:.2f}")


if __name__ == "__main__":
    main()
