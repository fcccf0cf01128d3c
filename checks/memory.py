"""``memory``: physical memory, what is available, and our cgroup's limit (v1 or v2).

Options (``[checks.memory]``): ``meminfo`` (default /proc/meminfo), ``proc_cgroup``
(default /proc/self/cgroup), ``cgroup_root`` (default /sys/fs/cgroup),
``min_available_mb`` (FAILED below it; default 0, no floor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checks._util import option_int, option_path, read_text
from pilot.api import CheckContext, CheckOutcome, Status, read_cgroup_limits

NAME = "memory"
MB = 1024 * 1024


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {key: bytes}."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            factor = 1024 if parts[1:2] == ["kB"] else 1
            values[key.strip()] = int(parts[0]) * factor
    return values


def cgroup_limit(proc_cgroup: Path, root: Path) -> tuple[int | None, int | None]:
    """(cgroup version, memory limit in bytes or None if unlimited) for this process:
    the smallest limit from our cgroup up to the hierarchy's root (the pilot's reader)."""
    found = read_cgroup_limits(root, proc_cgroup)
    version = {"v1": 1, "v2": 2}.get(found.version or "")
    return version, found.memory_bytes if version is not None else None


class MemoryCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 5.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        info = parse_meminfo(read_text(option_path(ctx, NAME, "meminfo", "/proc/meminfo")) or "")
        if "MemTotal" not in info:
            return CheckOutcome(Status.FAILED, "cannot read MemTotal from meminfo")
        version, limit = cgroup_limit(
            option_path(ctx, NAME, "proc_cgroup", "/proc/self/cgroup"),
            option_path(ctx, NAME, "cgroup_root", "/sys/fs/cgroup"),
        )
        total = info["MemTotal"] // MB
        available = info.get("MemAvailable", info.get("MemFree", 0)) // MB
        usable = min(total, limit // MB) if limit is not None else total
        facts: dict[str, Any] = {
            "total_mb": total,
            "available_mb": available,
            "swap_total_mb": info.get("SwapTotal", 0) // MB,
            "cgroup_version": version,
            "cgroup_limit_mb": None if limit is None else limit // MB,
            "usable_mb": usable,
        }
        floor = option_int(ctx, NAME, "min_available_mb", 0)
        if available < floor:
            return CheckOutcome(
                Status.FAILED, f"{available} MB available, below the {floor} MB floor", facts
            )
        message = f"{total} MB total, {available} MB available"
        message += f", cgroup limit {limit // MB} MB" if limit is not None else ", no cgroup limit"
        slot = ctx.batch.memory_mb
        if slot is not None and slot > usable:
            return CheckOutcome(
                Status.WARNING, f"slot claims {slot} MB but only {usable} MB usable", facts
            )
        return CheckOutcome(Status.PASSED, message, facts)
