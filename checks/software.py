"""``software``: OS release, kernel, glibc, DIRAC platform string, required commands.

Options (``[checks.software]``): ``os_release`` (default /etc/os-release, falling back
to /usr/lib/os-release), ``commands`` (list of commands that must be on PATH).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from checks._util import option_str, option_str_list, read_text
from pilot.api import CheckContext, CheckOutcome, Status

NAME = "software"
OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")


def parse_os_release(text: str) -> dict[str, str]:
    """os-release KEY=value lines (values optionally quoted) as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key.strip()] = value
    return values


def glibc_version() -> str | None:
    """The C library's version if it is glibc ("2.36"), else None."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split()[1]


def dirac_platform(system: str, machine: str, glibc: str | None) -> str:
    """DIRAC's platform string, e.g. ``Linux_x86_64_glibc-2.36``."""
    base = f"{system}_{machine}"
    return f"{base}_glibc-{glibc}" if glibc else base


class SoftwareCheck:
    name: str = NAME
    required: bool = True
    timeout: float | None = 10.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        release = _os_release(ctx)
        glibc = glibc_version()
        commands = {cmd: shutil.which(cmd) for cmd in option_str_list(ctx, NAME, "commands")}
        facts: dict[str, Any] = {
            "os_id": release.get("ID"),
            "os_version_id": release.get("VERSION_ID"),
            "os_name": release.get("PRETTY_NAME") or release.get("NAME"),
            "kernel": os.uname().release,
            "glibc": glibc,
            "platform": dirac_platform(os.uname().sysname, os.uname().machine, glibc),
            "commands": commands,
        }
        missing = [cmd for cmd, path in commands.items() if path is None]
        if missing:
            return CheckOutcome(Status.FAILED, "missing commands: " + ", ".join(missing), facts)
        message = f"{facts['os_name'] or 'unknown OS'}, {facts['platform']}"
        return CheckOutcome(Status.PASSED, message, facts)


def _os_release(ctx: CheckContext) -> dict[str, str]:
    paths: tuple[str, ...] = OS_RELEASE_PATHS
    if ctx.option(NAME, "os_release") is not None:
        paths = (option_str(ctx, NAME, "os_release", ""),)
    for path in paths:
        text = read_text(Path(path))
        if text is not None:
            return parse_os_release(text)
    return {}
