"""Run the whole pytest suite as two pytest processes side by side; both must pass.

The fault tests (tests/test_faults.py) spend most of their three minutes waiting: a 60 s
blackout, a kill that must arrive on the default 20 s poll, a stub restart, retries on
the default back-off. They run in a second pytest beside the rest of the suite, which
keeps both cores busy with the builds, the clusters and the DIRAC server; they start
only their own stubs and proxies on loopback ports of their own, so the two processes
share nothing. The rest's output is shown as it runs, the fault tests' after it.

    python scripts/run_suite.py [pytest options given to both]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BESIDE = ("tests/test_faults.py",)


def main(argv: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest", "-q"]
    with tempfile.TemporaryFile(mode="w+") as out:
        beside = subprocess.Popen(
            [*pytest, *BESIDE, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            ignore = [f"--ignore={path}" for path in BESIDE]
            rest = subprocess.call([*pytest, *ignore, *argv], cwd=REPO)
            if beside.poll() is None:
                print(f"== pytest: waiting for the fault tests ({', '.join(BESIDE)})", flush=True)
            faults = beside.wait()
        finally:
            if beside.poll() is None:  # interrupted: end the process we started
                beside.terminate()
                beside.wait()
        out.seek(0)
        print(f"== pytest beside: {', '.join(BESIDE)}", flush=True)
        sys.stdout.write(out.read())
    print(f"== pytest: the rest exited {rest}, the fault tests {faults}")
    return rest or faults


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
