"""``container``: which container runtimes are present and can run something.

apptainer and singularity need an image to ``exec``, so ``--version`` is their probe;
bwrap runs ``true`` in a new user namespace. Never required. Options
(``[checks.container]``): ``path`` (search path instead of $PATH, for tests).
"""

from __future__ import annotations

import shutil
from typing import Any

from checks._util import budget, describe_failure, run_parallel
from pilot.api import CheckContext, CheckOutcome, Status, run_command

NAME = "container"
PROBE_SECONDS = 10.0
BWRAP_PROBE = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-user", "true")
PROBES: dict[str, tuple[str, ...]] = {
    "apptainer": ("--version",),
    "singularity": ("--version",),
    "bwrap": BWRAP_PROBE,
}


def probe_runtime(executable: str, args: tuple[str, ...], seconds: float) -> dict[str, Any]:
    result = run_command([executable, *args], timeout=seconds)
    facts: dict[str, Any] = {"path": executable, "usable": result.ok}
    if result.ok:
        lines = result.stdout.strip().splitlines()
        if lines and args == ("--version",):
            facts["version"] = lines[0].strip()
    else:
        facts["error"] = describe_failure(result)
    return facts


class ContainerCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 15.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        search = ctx.option(NAME, "path")
        if search is not None and not isinstance(search, str):
            raise ValueError(f"option checks.{NAME}.path: expected a string, got {search!r}")
        found = {tool: shutil.which(tool, path=search) for tool in PROBES}
        present = {tool: exe for tool, exe in found.items() if exe is not None}
        seconds = budget(ctx, PROBE_SECONDS)
        jobs = [
            (lambda exe=exe, tool=tool: probe_runtime(exe, PROBES[tool], seconds))
            for tool, exe in present.items()
        ]
        probed = run_parallel(jobs, seconds + 2.0)
        facts: dict[str, Any] = {tool: None for tool in PROBES}
        for tool, result in zip(present, probed, strict=True):
            facts[tool] = result or {"path": present[tool], "usable": False, "error": "no answer"}
        usable = tuple(tool for tool in PROBES if facts[tool] and facts[tool]["usable"])
        broken = [f"{tool}: {facts[tool]['error']}" for tool in present if tool not in usable]
        if broken:
            message = "; ".join(broken)
            return CheckOutcome(Status.WARNING, message, facts, usable)
        message = ", ".join(usable) if usable else "no container runtime found"
        return CheckOutcome(Status.PASSED, message, facts, usable)
