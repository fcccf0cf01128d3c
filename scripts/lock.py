"""Refresh the lock files under requirements/ (``make lock``).

Each lock pins exact versions with hashes for one installation:

- ``dev.lock``: ``make venv`` (pyproject.toml's dependencies with the dev and build extras,
  plus requirements/tools.in);
- ``binary.lock``: the bullseye build tree of ``make binary``, the same versions as dev.lock;
- ``staticx.lock``: the non-root ``build.py --method staticx`` build, binary.lock plus staticx;
- ``dirac.lock``: the test DIRAC server's venv (testbed/dirac_server).

Each lock keeps the versions it pins where the ranges still allow them (so adding a
dependency adds it and what it needs, and changes nothing else); ``--upgrade`` (``make lock
UPGRADE=1``) takes the newest release in range of everything. Nothing else resolves
versions: a release elsewhere changes nothing until this is run with ``--upgrade``, the
suite passes on the new locks and they are committed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
COMMON = [
    "--generate-hashes",
    "--python-version",
    "3.11",
    "--no-header",
    "--emit-index-annotation",
    "--quiet",
]
LINUX = ["--python-platform", "x86_64-unknown-linux-gnu"]
# the binary's wheels are chosen for glibc <= 2.28 (build/build.py)
EL8 = ["--python-platform", "x86_64-manylinux_2_28"]

LOCKS: list[tuple[str, list[str]]] = [
    (
        "dev.lock",
        ["pyproject.toml", "requirements/tools.in", "--extra", "dev", "--extra", "build", *LINUX],
    ),
    ("binary.lock", ["requirements/binary.in", "-c", "requirements/dev.lock", *EL8]),
    ("staticx.lock", ["requirements/staticx.in", "-c", "requirements/binary.lock", *EL8]),
    ("dirac.lock", ["requirements/dirac.in", "--no-emit-package", "gfal2-python", *LINUX]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upgrade", action="store_true", help="newest versions in range, not the locked ones"
    )
    upgrade = ["--upgrade"] if parser.parse_args(argv).upgrade else []
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("lock: uv not found (it is in requirements/tools.in: run make venv)", file=sys.stderr)
        return 2
    for name, args in LOCKS:
        print(f"lock: resolving requirements/{name}", file=sys.stderr)
        command = [uv, "pip", "compile", *COMMON, *upgrade, *args, "-o", f"requirements/{name}"]
        if subprocess.run(command, cwd=REPO).returncode != 0:
            print(f"lock: resolving {name} failed", file=sys.stderr)
            return 1
    print("lock: done; run make test, then commit requirements/*.lock", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
