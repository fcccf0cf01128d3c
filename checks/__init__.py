"""The built-in environment checks, one module each; VO plugins use the same API.

``BUILTIN_CHECKS`` is the static set the pilot always knows about; third-party checks
come from the ``pilot.checks`` entry-point group (see :mod:`pilot.node.checking`).
"""

from __future__ import annotations

from checks.container import ContainerCheck
from checks.cpu import CpuCheck
from checks.credentials import CredentialsCheck
from checks.cvmfs import CvmfsCheck
from checks.disk import DiskCheck
from checks.gpu import GpuCheck
from checks.load import LoadCheck
from checks.memory import MemoryCheck
from checks.software import SoftwareCheck
from pilot.api import Check

__all__ = ["BUILTIN_CHECKS"]

BUILTIN_CHECKS: tuple[Check, ...] = (
    CpuCheck(),
    MemoryCheck(),
    DiskCheck(),
    SoftwareCheck(),
    CvmfsCheck(),
    CredentialsCheck(),
    ContainerCheck(),
    GpuCheck(),
    LoadCheck(),
)
