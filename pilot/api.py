"""What check authors import: the ``Check`` protocol, its values, and the pilot's services.

A VO plugin is a class (or instance) exposed through the entry-point group
``pilot.checks``; it needs nothing from the pilot but this module, and it gets exactly
what the built-in checks (package ``checks``, which import nothing else from ``pilot``
either) get: the :class:`CheckContext` (work directory, batch slot, options, the pilot's
resolved credentials, its time budget), :func:`run_command` for helper commands under a
timeout, :func:`read_cgroup_limits`, and the credential helpers below::

    from pilot.api import Check, CheckContext, CheckOutcome, Status

    class SiteSoftware:
        name = "myvo-software"
        required = True
        timeout = 10.0

        def run(self, ctx: CheckContext) -> CheckOutcome:
            ...
            return CheckOutcome(Status.PASSED, "release 42 found", tags=("myvo-42",))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pilot.cgroups import Limits as CgroupLimits
from pilot.cgroups import read_limits as read_cgroup_limits
from pilot.errors import CredentialError
from pilot.grid.gridenv import Token, find_token, token_expiry
from pilot.grid.resolve import NO_CREDENTIALS, Credentials
from pilot.node.batch import BatchInfo
from pilot.proc import CommandResult
from pilot.proc import run as run_command

if TYPE_CHECKING:
    from pilot.grid.credentials import Proxy as Proxy

__all__ = [
    "BatchInfo",
    "CgroupLimits",
    "Check",
    "CheckContext",
    "CheckOutcome",
    "CheckResult",
    "CommandResult",
    "CredentialError",
    "Credentials",
    "NodeFacts",
    "Status",
    "Token",
    "find_token",
    "first_pass_options",
    "load_proxy",
    "read_cgroup_limits",
    "run_command",
    "token_expiry",
    "validate_proxy",
]


class Status(StrEnum):
    PASSED = "PASSED"
    WARNING = "WARNING"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class CheckContext:
    """What a check may look at. ``options`` holds the ``[checks.<name>]`` config table."""

    work_dir: Path
    batch: BatchInfo
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Seconds the running check may take in all; set by the runner for each check, so
    # that a check starting helper processes can bound them (None: not run by the runner).
    timeout: float | None = None
    # The pilot's credentials as resolved once for the run (proxy path, CAs, token).
    credentials: Credentials = NO_CREDENTIALS

    def option(self, check: str, key: str, default: Any = None) -> Any:
        return self.options.get(check, {}).get(key, default)


@dataclass(frozen=True)
class CheckOutcome:
    """What ``Check.run`` returns."""

    status: Status
    message: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """A check's outcome as the pilot records it (with name, requirement and duration)."""

    name: str
    required: bool
    status: Status
    message: str
    duration: float
    facts: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    source: str = "builtin"  # builtin | entry-point:<dist> | exec:<path>

    @property
    def failed(self) -> bool:
        return self.status is Status.FAILED


@runtime_checkable
class Check(Protocol):
    name: str
    required: bool
    timeout: float | None  # seconds; None uses the pilot's default

    def run(self, ctx: CheckContext) -> CheckOutcome: ...

    # Optional: ``first_pass_options: Mapping[str, Any]``. A check that has it may finish
    # after the first match: the pilot runs it first with these option overrides (a quick
    # pass, before registering), then again with its configured options beside the first
    # job, and folds that result in before the next match. Read it with
    # :func:`first_pass_options`.


def first_pass_options(check: object) -> Mapping[str, Any] | None:
    """The check's ``first_pass_options`` when it may finish after the first match."""
    options = getattr(check, "first_pass_options", None)
    return options if isinstance(options, Mapping) else None


@dataclass(frozen=True)
class NodeFacts:
    """The check facts the pilot itself relies on, read here and nowhere else.

    :data:`SOURCES` declares which check reports each one under which key; a check (built
    in or VO plugin) that takes over one of these names provides the fact."""

    cpu_power: float | None = None  # DB12-style power of one core
    platform: str | None = None  # DIRAC platform string, e.g. Linux_x86_64_glibc-2.36
    free_disk_mb: int | None = None  # free space in the work directory
    gpus: int = 0

    SOURCES: ClassVar[Mapping[str, tuple[str, str]]] = {
        "cpu_power": ("cpu", "benchmark"),
        "platform": ("software", "platform"),
        "free_disk_mb": ("disk", "free_mb"),
        "gpus": ("gpu", "count"),
    }

    @classmethod
    def from_results(cls, results: Iterable[CheckResult]) -> NodeFacts:
        facts = {r.name: r.facts for r in results}

        def fact(name: str) -> Any:
            check, key = cls.SOURCES[name]
            return facts.get(check, {}).get(key)

        power, platform, free, gpus = (fact(n) for n in cls.SOURCES)
        return cls(
            cpu_power=float(power) if _is_number(power) and power > 0 else None,
            platform=str(platform) if platform else None,
            free_disk_mb=int(free) if _is_number(free) else None,
            gpus=int(gpus) if _is_number(gpus) else 0,
        )


def _is_number(value: Any) -> bool:
    """A finite number of zero or more (no bool, NaN, infinity or negative count)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


# --- credential helpers for checks ----------------------------------------------------------


def load_proxy(path: Path) -> Proxy:
    """Read a proxy file (X.509 parsing, ``cryptography`` imported only now);
    :class:`CredentialError` when it is unreadable or malformed."""
    from pilot.grid import credentials

    return credentials.load_proxy(path)


def validate_proxy(proxy: Proxy, min_time_left: timedelta = timedelta(0)) -> None:
    """:class:`CredentialError` unless the proxy is valid now with ``min_time_left`` left."""
    from pilot.grid import credentials

    credentials.validate(proxy, min_time_left)
