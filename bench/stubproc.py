"""The matcher stub as a separate process, for the benchmarks (stopped by its pid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def start_stub(db: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``pilot-stub serve`` on a free loopback port; returns it and its URL."""
    proc = subprocess.Popen(
        [str(BIN / "pilot-stub"), "serve", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()
