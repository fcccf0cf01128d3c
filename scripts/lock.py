"""Refresh the lock files under requirements/ (``make lock``).

Each lock pins exact versions with hashes for one installation:

- ``dev.lock``: ``make venv`` (pyproject.toml's dependencies with the dev and build extras,
  plus requirements/tools.in);
- ``binary.lock``: the bullseye build tree of ``make binary``, the same versions as dev.lock;
- ``staticx.lock``: the non-root ``build.py --method staticx`` build, binary.lock plus staticx;
- ``dirac.lock``: the test DIRAC server's venv (tests/dirac_server).

Nothing else resolves versions: a release elsewhere changes nothing until this is run, the
suite passes on the new locks and they are committed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
COMMON = ["--generate-hashes", "--python-version", "3.11", "--no-header", "--emit-index-annotation", "--quiet"]
LINUX = ["--python-platform", "x86_64-unknown-linux-gnu"]
# the binary's wheels are chosen for glibc <= 2.28 (build/build.py)
EL8 = ["--python-platform", "x86_64-manylinux_2_28"]

LOCKS: list[tuple[str, list[str]]] = [
    ("dev.lock", ["pyproject.toml", "requirements/tools.in", "--extra", "dev", "--extra", "build", *LINUX]),
    ("binary.lock", ["requirements/binary.in", "-c", "requirements/dev.lock", *EL8]),
    ("staticx.lock", ["requirements/staticx.in", "-c", "requirements/binary.lock", *EL8]),
    ("dirac.lock", ["requirements/dirac.in", "--no-emit-package", "gfal2-python", *LINUX]),
]


def main() -> int:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("lock: uv not found (it is in requirements/tools.in: run make venv)", file=sys.stderr)
        return 2
    for name, args in LOCKS:
        print(f"lock: resolving requirements/{name}", file=sys.stderr)
        argv = [uv, "pip", "compile", *COMMON, "--upgrade", *args, "-o", f"requirements/{name}"]
        if subprocess.run(argv, cwd=REPO).returncode != 0:
            print(f"lock: resolving {name} failed", file=sys.stderr)
            return 1
    print("lock: done; run make test, then commit requirements/*.lock", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
