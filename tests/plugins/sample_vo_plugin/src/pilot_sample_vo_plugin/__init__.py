"""A sample VO check plugin: everything a VO ships is this class and an entry point.

Options (``[checks.sample-vo]``): ``marker`` (a file that must exist, relative to the
work dir or absolute; unset: nothing to look for), ``release`` (reported as a fact).
"""

from __future__ import annotations

from pilot.api import CheckContext, CheckOutcome, Status

NAME = "sample-vo"


class SampleVOCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 5.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        release = str(ctx.option(NAME, "release", "1.0"))
        marker = ctx.option(NAME, "marker")
        facts = {"release": release, "marker": marker}
        if marker is not None and not (ctx.work_dir / str(marker)).exists():
            return CheckOutcome(Status.FAILED, f"marker {marker} not found", facts)
        return CheckOutcome(Status.PASSED, f"sample VO release {release}", facts, ("sample-vo:ok",))
