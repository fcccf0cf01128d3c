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

__all__ = ["BUILTIN_CHECKS", "BUILTIN_OPTIONS"]

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

# The [checks.<name>] options each built-in check reads, and their kind (as
# pilot.config.check_options understands it); ``timeout`` is every check's. A VO's plugin
# or executable check reads what it likes: only the built-ins' options are checked.
BUILTIN_OPTIONS: dict[str, dict[str, str]] = {
    "cpu": {
        "cpuinfo": "path",
        "benchmark": "bool",
        "benchmark_seconds": "number",
        "benchmark_max_copies": "int",
    },
    "memory": {
        "meminfo": "path",
        "proc_cgroup": "path",
        "cgroup_root": "path",
        "min_available_mb": "int",
    },
    "disk": {"min_free_mb": "int", "min_free_inodes": "int"},
    "software": {"commands": "list", "os_release": "path"},
    "cvmfs": {"repositories": "list", "root": "path", "probe_timeout": "number"},
    "credentials": {"proxy": "path", "required": "bool", "min_time_left": "number"},
    "container": {"path": "str"},
    "gpu": {"nvidia_smi": "str", "proc_dir": "path"},
    "load": {"loadavg": "path", "max_load_per_core": "number"},
}
