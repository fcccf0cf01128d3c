"""``disk``: the scratch directory (the work dir) exists, is writable and has room.

Options (``[checks.disk]``): ``min_free_mb`` (default 1024), ``min_free_inodes``
(default 10000; ignored on file systems that report no inode count).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from checks._util import option_int
from pilot.api import CheckContext, CheckOutcome, Status

NAME = "disk"
MB = 1024 * 1024


def write_probe(directory: Path) -> str | None:
    """None if a small file can be written to and removed from ``directory``, else why not."""
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".pilot-disk-check-") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()
    except OSError as exc:
        return f"not writable: {exc.strerror or exc}"
    return None


class DiskCheck:
    name: str = NAME
    required: bool = True
    timeout: float | None = 10.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        path = ctx.work_dir
        try:
            stats = os.statvfs(path)
        except OSError as exc:
            message = f"{path}: {exc.strerror or exc}"
            return CheckOutcome(Status.FAILED, message, {"path": str(path)})
        free_mb = stats.f_bavail * stats.f_frsize // MB
        inodes = stats.f_favail if stats.f_files > 0 else None
        error = write_probe(path)
        facts: dict[str, Any] = {
            "path": str(path),
            "free_mb": free_mb,
            "total_mb": stats.f_blocks * stats.f_frsize // MB,
            "free_inodes": inodes,
            "writable": error is None,
        }
        min_mb = option_int(ctx, NAME, "min_free_mb", 1024)
        min_inodes = option_int(ctx, NAME, "min_free_inodes", 10000)
        problems = [error] if error else []
        if free_mb < min_mb:
            problems.append(f"{free_mb} MB free, below the {min_mb} MB floor")
        if inodes is not None and inodes < min_inodes:
            problems.append(f"{inodes} inodes free, below the {min_inodes} floor")
        if problems:
            return CheckOutcome(Status.FAILED, f"{path}: " + "; ".join(problems), facts)
        return CheckOutcome(Status.PASSED, f"{path}: {free_mb} MB free, writable", facts)
