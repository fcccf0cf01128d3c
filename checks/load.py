"""``load``: the node's 1-minute load average per logical CPU.

WARNING above ``max_load_per_core`` (default 2.0): an overloaded node runs payloads slowly.
Options (``[checks.load]``): ``max_load_per_core``, ``loadavg`` (default /proc/loadavg).
"""

from __future__ import annotations

import os

from checks._util import option_float, option_path, read_text
from pilot.api import CheckContext, CheckOutcome, Status

NAME = "load"


def read_loadavg(text: str | None) -> tuple[float, float, float]:
    """(1, 5, 15-minute) load averages from /proc/loadavg text, else from the OS."""
    if text:
        parts = text.split()
        try:
            return float(parts[0]), float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            pass
    return os.getloadavg()


class LoadCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 5.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        text = read_text(option_path(ctx, NAME, "loadavg", "/proc/loadavg"))
        load1, load5, load15 = read_loadavg(text)
        cpus = os.cpu_count() or 1  # the load average is the whole node's
        per_core = load1 / cpus
        facts = {
            "load1": load1,
            "load5": load5,
            "load15": load15,
            "cpus": cpus,
            "load_per_core": round(per_core, 3),
        }
        limit = option_float(ctx, NAME, "max_load_per_core", 2.0)
        message = f"load {load1:.2f} on {cpus} CPUs ({per_core:.2f} per core)"
        if per_core > limit:
            return CheckOutcome(Status.WARNING, f"{message}, above {limit:g}", facts)
        return CheckOutcome(Status.PASSED, message, facts)
