"""What check-plugin authors import: the ``Check`` protocol and its values.

A VO plugin is a class (or instance) exposed through the entry-point group
``pilot.checks``; it needs nothing from the pilot but this module::

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pilot.node.batch import BatchInfo

__all__ = ["Check", "CheckContext", "CheckOutcome", "CheckResult", "Status"]


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
