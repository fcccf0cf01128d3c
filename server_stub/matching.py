"""DIRAC matching semantics: does a job fit a pilot's resource description, and if not, why.

A job's requirements are extracted once at submission (:func:`requirements`) and stored
with the job; :func:`mismatches` compares them with a resource description that uses
DIRAC's names (Site, GridCE, Platform, CPUTime, Tag, RequiredTag, NumberOfProcessors,
MaxRAM, VirtualOrganization) and returns human-readable reasons (empty: it matches).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pilot.job.jdl import JobDescription

_PROCESSOR_TAG = re.compile(r"^\d+Processors$")

# Every key of a resource description that :func:`mismatches` reads, and only those: a
# pilot's description carries more (PilotReference, WallClockTimeLeft, DiskSpace...),
# which no decision depends on. The task queues remember which queues fit a description
# by these fields alone; tests/test_taskqueues.py checks that mismatches reads no other.
RESOURCE_FIELDS: tuple[str, ...] = (
    "Site",
    "Platform",
    "GridCE",
    "CPUTime",
    "NumberOfProcessors",
    "MaxRAM",
    "VirtualOrganization",
    "Tag",
    "RequiredTag",
)


def requirements(desc: JobDescription) -> dict[str, Any]:
    """The part of a job description that matching looks at, as JSON-able values."""
    return {
        "sites": list(desc.sites),
        "banned_sites": list(desc.banned_sites),
        "platforms": list(desc.platforms),
        "grid_ces": list(desc.grid_ces),
        "tags": list(desc.tags),
        "cpu_time": desc.cpu_time,
        "min_processors": desc.min_processors,
        "max_ram_mb": desc.max_ram_mb,
        "vo": desc.vo,
        "whole_node": desc.whole_node,
    }


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _number(value: Any) -> float | None:
    """A finite number, else None (not given): NaN and infinities included, which
    would otherwise compare false both ways, or overflow in a reason's text."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def cpu_time_left(res: Mapping[str, Any]) -> float | None:
    """The CPU time a resource description offers; None: no limit given."""
    return _number(res.get("CPUTime"))


def mismatches(req: Mapping[str, Any], res: Mapping[str, Any]) -> list[str]:
    """Reasons why a job with requirements ``req`` cannot run on resource ``res``."""
    reasons: list[str] = []
    site = res.get("Site")
    if req["sites"] and site not in req["sites"]:
        reasons.append(f"site {site} not in job's sites {', '.join(req['sites'])}")
    if site is not None and site in req["banned_sites"]:
        reasons.append(f"site {site} banned")
    _list_mismatch(reasons, "platform", req["platforms"], res.get("Platform"))
    _list_mismatch(reasons, "CE", req["grid_ces"], res.get("GridCE"))
    cpu_left = cpu_time_left(res)
    if cpu_left is not None and req["cpu_time"] > cpu_left:
        reasons.append(f"CPUTime {req['cpu_time']} > {int(cpu_left)} left")
    procs = _number(res.get("NumberOfProcessors"))
    procs = 1 if procs is None else procs
    if req["min_processors"] > procs:
        reasons.append(f"needs {req['min_processors']} processors, {int(procs)} available")
    ram = _number(res.get("MaxRAM"))
    if req["max_ram_mb"] is not None and ram is not None and req["max_ram_mb"] > ram:
        reasons.append(f"MaxRAM {req['max_ram_mb']} MB > {int(ram)} MB available")
    vo = res.get("VirtualOrganization")
    if req["vo"] and vo and req["vo"] != vo:
        reasons.append(f"VO {req['vo']} is not the pilot's VO {vo}")
    reasons.extend(_tag_mismatches(req, res))
    return reasons


def _list_mismatch(reasons: list[str], what: str, allowed: list[str], value: Any) -> None:
    if allowed and "ANY" not in allowed and value not in allowed:
        reasons.append(f"{what} {value} not in job's {what}s {', '.join(allowed)}")


def _tag_mismatches(req: Mapping[str, Any], res: Mapping[str, Any]) -> list[str]:
    have = set(_as_list(res.get("Tag")))
    job_tags = set(req["tags"])
    reasons = []
    for tag in sorted(job_tags - have):
        # Processor tags are derived from the processor count, compared as a number above.
        if _PROCESSOR_TAG.match(tag) or tag == "MultiProcessor":
            continue
        reasons.append(f"needs tag {tag}")
    for tag in sorted(set(_as_list(res.get("RequiredTag"))) - job_tags):
        reasons.append(f"pilot requires tag {tag}")
    return reasons
