"""The one reader of cgroup files: which cgroup this process is in (v1 or v2), and the
CPU and memory limits along it and its ancestors.

Used for slot detection (:mod:`pilot.node.batch`), the ``memory`` check (through
:mod:`pilot.api`) and payload isolation (:mod:`pilot.job.isolation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

UNLIMITED_BYTES = 1 << 60  # cgroup v1 prints 9223372036854771712 for "no limit"
ROOT = Path("/sys/fs/cgroup")
SELF = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Limits:
    """This process's cgroup and the lowest limits along its ancestors (None: unlimited)."""

    version: str | None = None  # "v1" (including hybrid) or "v2"; None: no cgroup info
    path: str | None = None
    cpus: float | None = None  # quota / period, may be fractional
    memory_bytes: int | None = None


def read_small(path: Path, limit: int = 4096) -> str | None:
    """The stripped text of a small pseudo-file, or ``None`` if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(limit).strip()
    except OSError:
        return None


def parse_self_cgroup(text: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """The v2 path and, for v1, controller -> (hierarchy's controller list, path)."""
    unified: str | None = None
    v1: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            unified = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = (controllers, path)
    return unified, v1


def ancestors(base: Path, cgroup_path: str) -> list[Path]:
    """``base/<cgroup_path>`` and each parent up to ``base`` that exist, leaf first.

    A path escaping the namespace (``/../..``) cannot be followed: only ``base`` is used.
    """
    parts = PurePosixPath(cgroup_path).parts[1:]
    if ".." in parts:
        parts = ()
    dirs = (base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1))
    return [d for d in dirs if d.is_dir()]


def _lowest_in(dirs: Iterable[Path], read: Callable[[Path], float | None]) -> float | None:
    values = [v for v in map(read, dirs) if v is not None]
    return min(values) if values else None


def _v2_memory(d: Path) -> float | None:
    text = read_small(d / "memory.max")
    return float(text) if text and text.isdigit() else None  # "max": unlimited


def _v1_memory(d: Path) -> float | None:
    text = read_small(d / "memory.limit_in_bytes")
    if not text or not text.isdigit() or int(text) >= UNLIMITED_BYTES:
        return None
    return float(text)


def _v2_cpu(d: Path) -> float | None:
    fields = (read_small(d / "cpu.max") or "").split()
    if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
        return None  # "max 100000": unlimited
    return int(fields[0]) / int(fields[1]) if int(fields[1]) > 0 else None


def _v1_cpu(d: Path) -> float | None:
    quota = read_small(d / "cpu.cfs_quota_us") or ""
    period = read_small(d / "cpu.cfs_period_us") or ""
    if not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None  # quota -1: unlimited
    return int(quota) / int(period)


def _v1_base(root: Path, controller: str, hierarchy: str) -> Path | None:
    for name in (hierarchy, controller):  # "cpu,cpuacct" is often also linked as "cpu"
        if (root / name).is_dir():
            return root / name
    return None


def _v1_dirs(root: Path, v1: Mapping[str, tuple[str, str]], controller: str) -> list[Path]:
    if controller not in v1:
        return []
    hierarchy, path = v1[controller]
    base = _v1_base(root, controller, hierarchy)
    return ancestors(base, path) if base is not None else []


def read_limits(root: Path = ROOT, self_cgroup: Path = SELF) -> Limits:
    """Limits from ``self_cgroup`` (``/proc/self/cgroup``) under the mount ``root``."""
    text = read_small(self_cgroup, 65536)
    if text is None:
        return Limits()
    unified, v1 = parse_self_cgroup(text)
    if (root / "cgroup.controllers").is_file() and unified is not None:
        dirs = ancestors(root, unified)
        memory = _lowest_in(dirs, _v2_memory)
        return Limits("v2", unified, _lowest_in(dirs, _v2_cpu), _int(memory))
    if not v1:
        return Limits()
    memory = _lowest_in(_v1_dirs(root, v1, "memory"), _v1_memory)
    cpus = _lowest_in(_v1_dirs(root, v1, "cpu"), _v1_cpu)
    path = (v1.get("memory") or v1.get("cpu") or ("", "/"))[1]
    return Limits("v1", path, cpus, _int(memory))


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
