"""Per-batch-system parsing for :mod:`pilot.node.batch`.

Each ``detect_<system>`` function looks at the environment (and, when needed, one or two
short commands run through :class:`Probe`) and returns a :class:`SystemReport`, or
``None`` when the pilot does not run under that system. Wall-clock limits are reported
as absolute deadlines (epoch seconds) so that :mod:`pilot.node.batch` can combine several
limits with ``min`` and turn the winner into "seconds left" at one single instant.

Commands never raise and never hang: a missing, failing or timed-out command yields
``None`` and the caller moves on to its next source.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

from pilot.proc import CommandResult

log = logging.getLogger(__name__)

BatchSystem = Literal["slurm", "htcondor", "pbs", "lsf", "sge", "local"]

T = TypeVar("T")

_AD_MAX_BYTES = 4 * 1024 * 1024  # job ads are tens of kB; refuse anything absurd


@dataclass(frozen=True)
class Sourced(Generic[T]):
    """A value and the place it was learnt from (shown in ``BatchInfo.sources``)."""

    value: T
    source: str


@dataclass(frozen=True)
class SystemReport:
    """What one batch system told us; ``None`` fields are left to other sources."""

    system: BatchSystem
    job_id: str | None
    found_by: str  # the environment variable that revealed the system
    cores: Sourced[int] | None = None
    memory_mb: Sourced[int] | None = None
    deadline: Sourced[float] | None = None  # epoch seconds when the slot ends
    unlimited: str | None = None  # set when a source said "no wall-time limit"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """The environment, the command runner and the clock a detector may use."""

    env: Mapping[str, str]
    run: Callable[..., CommandResult]
    now: Callable[[], float]
    timeout: float

    def output(self, argv: Sequence[str]) -> str | None:
        """Stdout of ``argv`` if it succeeded in time, else ``None`` (logged)."""
        result = self.run(list(argv), timeout=self.timeout)
        if result.timed_out:
            log.warning("%s timed out after %.1f s; using the next source", argv[0], self.timeout)
            return None
        if not result.ok:
            first = result.stderr.strip().splitlines()[:1]
            log.info("%s failed (exit %d): %s", argv[0], result.returncode, "".join(first))
            return None
        return result.stdout


# --------------------------------------------------------------------------- parsing helpers

_CLOCK = re.compile(r"(?:(\d+)-)?(\d+(?::\d+){0,3})(\.\d+)?")


def parse_duration(text: str) -> float | None:
    """Seconds in a batch-system duration, or ``None`` if ``text`` is not one.

    Accepts ``S``, ``M:S``, ``H:M:S`` and ``D:H:M:S`` (SGE), ``D-H[:M[:S]]`` (Slurm), with
    optional fractional seconds. A bare number is seconds (PBS walltime, SGE h_rt); Slurm
    never prints one.
    """
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        return None
    days, clock, fraction = match.groups()
    parts = [int(part) for part in clock.split(":")]
    if days is not None:
        if len(parts) > 3:
            return None
        parts = [int(days), *parts, *[0] * (3 - len(parts))]
    else:
        parts = [0] * (4 - len(parts)) + parts
    d, h, m, s = parts
    return d * 86400 + h * 3600 + m * 60 + s + (float(fraction) if fraction else 0.0)


def positive_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value > 0 else None


def first_env_int(env: Mapping[str, str], names: Sequence[str]) -> Sourced[int] | None:
    """The first of ``names`` set to a positive integer, with its name as the source."""
    for name in names:
        value = positive_int(env.get(name))
        if value is not None:
            return Sourced(value, name)
    return None


def expand_counts(text: str) -> list[int]:
    """Slurm per-node counts: ``4``, ``4,2``, ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if match is None:
            return []
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


_PBS_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def pbs_size_mb(text: str) -> int | None:
    """PBS sizes: ``4gb``, ``4096mb``, ``123456kb``, ``1024`` (bytes), ``512mw`` (8-byte words)."""
    match = re.fullmatch(r"(\d+)([kmgtp]?)([bw]?)", text.strip().lower())
    if match is None:
        return None
    number, prefix, kind = match.groups()
    size = int(number) * _PBS_UNITS[prefix] * (8 if kind == "w" else 1)
    return size // (1024 * 1024) or None


def parse_local_time(text: str, formats: Sequence[str]) -> float | None:
    """Epoch seconds of a time stamp printed in the node's local time zone."""
    text = " ".join(text.split())
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    return None


_CTIME = "%a %b %d %H:%M:%S %Y"


def _deadline_from_left(probe: Probe, left: float | None, source: str) -> Sourced[float] | None:
    return None if left is None else Sourced(probe.now() + left, source)


def _pick_env(env: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    return {key: env[var] for key, var in names.items() if env.get(var)}


# --------------------------------------------------------------------------- Slurm

SLURM_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def detect_slurm(probe: Probe) -> SystemReport | None:
    env = probe.env
    found_by = next((v for v in ("SLURM_JOB_ID", "SLURM_JOBID") if env.get(v)), None)
    if found_by is None:
        return None
    job_id = env[found_by]
    cores = _slurm_cores(env)
    deadline, unlimited = _slurm_deadline(probe, job_id)
    extra = _pick_env(
        env,
        {"partition": "SLURM_JOB_PARTITION", "node": "SLURMD_NODENAME"}
        | {"cluster": "SLURM_CLUSTER_NAME", "account": "SLURM_JOB_ACCOUNT"},
    )
    return SystemReport(
        "slurm", job_id, found_by, cores, _slurm_memory(env, cores), deadline, unlimited, extra
    )


def _slurm_cores(env: Mapping[str, str]) -> Sourced[int] | None:
    on_node = positive_int(env.get("SLURM_CPUS_ON_NODE"))
    if on_node is not None:
        return Sourced(on_node, "SLURM_CPUS_ON_NODE")
    counts = expand_counts(env.get("SLURM_JOB_CPUS_PER_NODE", ""))
    node = positive_int(env.get("SLURM_NODEID")) or 0  # the batch step runs on node 0
    if node < len(counts) and counts[node] > 0:
        return Sourced(counts[node], "SLURM_JOB_CPUS_PER_NODE")
    return None


def _slurm_memory(env: Mapping[str, str], cores: Sourced[int] | None) -> Sourced[int] | None:
    per_node = positive_int(env.get("SLURM_MEM_PER_NODE"))
    if per_node is not None:
        return Sourced(per_node, "SLURM_MEM_PER_NODE")
    per_cpu = positive_int(env.get("SLURM_MEM_PER_CPU"))
    if per_cpu is not None and cores is not None:
        return Sourced(per_cpu * cores.value, f"SLURM_MEM_PER_CPU x {cores.source}")
    return None


def _slurm_deadline(probe: Probe, job_id: str) -> tuple[Sourced[float] | None, str | None]:
    out = probe.output(["squeue", "-h", "-j", job_id, "-o", "%L"])
    left = out.strip().splitlines()[0].strip() if out and out.strip() else ""
    if left == "UNLIMITED":
        return None, "squeue %L"
    seconds = parse_duration(left) if left else None  # INVALID / NOT_SET: ask scontrol
    if seconds is not None:
        return Sourced(probe.now() + seconds, "squeue %L"), None
    out = probe.output(["scontrol", "show", "job", "-o", job_id])
    if out is not None:
        deadline, unlimited = parse_scontrol_job(out, probe.now())
        if deadline is not None or unlimited is not None:
            return deadline, unlimited
    end = positive_int(probe.env.get("SLURM_JOB_END_TIME"))
    return (Sourced(float(end), "SLURM_JOB_END_TIME") if end else None), None


def parse_scontrol_job(text: str, now: float) -> tuple[Sourced[float] | None, str | None]:
    """Deadline from ``scontrol show job -o``: EndTime, else StartTime/RunTime + TimeLimit."""
    fields = dict(re.findall(r"(?:^|\s)(TimeLimit|StartTime|EndTime|RunTime)=(\S+)", text))
    limit_text = fields.get("TimeLimit", "")
    if limit_text == "UNLIMITED":
        return None, "scontrol TimeLimit"
    limit = parse_duration(limit_text)
    if limit is None:
        return None, None
    start = parse_local_time(fields.get("StartTime", ""), [SLURM_TIME_FORMAT])
    end = parse_local_time(fields.get("EndTime", ""), [SLURM_TIME_FORMAT])
    if end is not None and start is not None and end > start:
        return Sourced(end, "scontrol EndTime"), None
    if start is not None:
        return Sourced(start + limit, "scontrol StartTime + TimeLimit"), None
    run_time = parse_duration(fields.get("RunTime", ""))
    if run_time is not None:
        return Sourced(now + limit - run_time, "scontrol TimeLimit - RunTime"), None
    return None, None


# --------------------------------------------------------------------------- HTCondor

Ad = Mapping[str, str]  # lower-cased attribute name -> unevaluated value text


def parse_classad(text: str) -> dict[str, str]:
    """Old-style ClassAd text (``Name = value`` lines); names are case-insensitive."""
    ad: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        name = name.strip()
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
            ad[name.lower()] = value.strip()
    return ad


def ad_number(ad: Ad | None, name: str) -> float | None:
    """A literal number attribute; expressions (``ifThenElse(...)``) count as absent."""
    raw = (ad or {}).get(name.lower())
    if raw is None or not re.fullmatch(r"[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", raw):
        return None
    return float(raw)


def ad_string(ad: Ad | None, name: str) -> str | None:
    raw = (ad or {}).get(name.lower())
    if raw is None or len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
        return None
    return raw[1:-1].replace('\\"', '"')


def _read_ad(path: str | None) -> tuple[dict[str, str], float] | None:
    """The parsed ad at ``path`` and the file's mtime, or ``None`` if unreadable."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(_AD_MAX_BYTES)
            mtime = os.fstat(handle.fileno()).st_mtime
    except OSError as exc:
        log.info("cannot read ClassAd %s: %s", path, exc)
        return None
    return parse_classad(text), mtime


def detect_htcondor(probe: Probe) -> SystemReport | None:
    env = probe.env
    job = _read_ad(env.get("_CONDOR_JOB_AD"))
    machine = _read_ad(env.get("_CONDOR_MACHINE_AD"))
    if job is None and machine is None:
        return None  # a leaked variable pointing nowhere is not an HTCondor slot
    job_ad, job_mtime = job if job is not None else ({}, None)
    machine_ad = machine[0] if machine is not None else {}
    found_by = "_CONDOR_JOB_AD" if job is not None else "_CONDOR_MACHINE_AD"
    choices = ((job_ad, "job ad"), (machine_ad, "machine ad"))
    cores = _first_ad_int(choices, ("CpusProvisioned", "Cpus", "RequestCpus"))
    memory = _first_ad_int(choices, ("MemoryProvisioned", "Memory", "RequestMemory"))
    extra = {"slot": env["_CONDOR_SLOT"]} if env.get("_CONDOR_SLOT") else {}
    if (name := ad_string(machine_ad, "Name")) is not None:
        extra["machine"] = name
    deadline = _condor_deadline(job_ad, machine_ad, job_mtime)
    return SystemReport(
        "htcondor", _condor_job_id(job_ad), found_by, cores, memory, deadline, extra=extra
    )


def _first_ad_int(choices: Sequence[tuple[Ad, str]], names: Sequence[str]) -> Sourced[int] | None:
    """The first positive literal among ``names`` (in order), looked up in each ad."""
    for name in names:
        for ad, label in choices:
            value = ad_number(ad, name)
            if value is not None and value >= 1:
                return Sourced(int(value), f"{label} {name}")
    return None


def _condor_job_id(job_ad: Ad) -> str | None:
    global_id = ad_string(job_ad, "GlobalJobId")
    if global_id:
        return global_id
    cluster, proc = ad_number(job_ad, "ClusterId"), ad_number(job_ad, "ProcId")
    return f"{int(cluster)}.{int(proc)}" if cluster is not None and proc is not None else None


# (ad, attribute, seconds per unit), most specific first
_CONDOR_LIMITS = (
    ("job", "MaxWallTimeMins", 60),
    ("job", "maxWallTime", 60),  # HTCondor-CE routes, minutes
    ("job", "BatchRuntime", 1),
    ("job", "MaxRuntime", 1),  # site convention (e.g. CERN), seconds
    ("job", "MaxJobRetirementTime", 1),
    ("machine", "MaxJobRetirementTime", 1),
)


def _condor_deadline(job_ad: Ad, machine_ad: Ad, ad_mtime: float | None) -> Sourced[float] | None:
    ads = {"job": job_ad, "machine": machine_ad}
    for which, name, unit in _CONDOR_LIMITS:
        limit = ad_number(ads[which], name)
        if limit is None or limit <= 0:
            continue
        for start_name in ("JobCurrentStartDate", "JobStartDate"):
            start = ad_number(job_ad, start_name)
            if start is not None and start > 0:
                return Sourced(start + limit * unit, f"{which} ad {name} + {start_name}")
        if ad_mtime is not None:  # the starter writes .job.ad when the job starts
            return Sourced(ad_mtime + limit * unit, f"{which} ad {name} + job ad mtime")
    return None


# --------------------------------------------------------------------------- PBS / Torque

_PBS_TIME_FORMATS = (_CTIME,)


def parse_qstat_full(text: str) -> dict[str, str]:
    """``qstat -f`` attributes; tab-indented lines continue the previous value."""
    attrs: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if line.startswith("\t") and last is not None:
            attrs[last] += line.strip()
            continue
        key, sep, value = line.strip().partition(" = ")
        if sep:
            attrs[key] = value.strip()
            last = key
    return attrs


def detect_pbs(probe: Probe) -> SystemReport | None:
    env = probe.env
    job_id = env.get("PBS_JOBID")
    if not job_id:
        return None
    cores = first_env_int(env, ("PBS_NUM_PPN", "NCPUS", "PBS_NP"))
    out = probe.output(["qstat", "-f", job_id])
    attrs = parse_qstat_full(out) if out is not None else {}
    if cores is None and (ncpus := positive_int(attrs.get("Resource_List.ncpus"))) is not None:
        cores = Sourced(ncpus, "qstat Resource_List.ncpus")
    memory = None
    if (mem := pbs_size_mb(attrs.get("Resource_List.mem", ""))) is not None:
        memory = Sourced(mem, "qstat Resource_List.mem")
    extra = _pick_env(env, {"queue": "PBS_QUEUE", "server": "PBS_SERVER"})
    return SystemReport(
        "pbs", job_id, "PBS_JOBID", cores, memory, _pbs_deadline(probe, attrs), extra=extra
    )


def _pbs_deadline(probe: Probe, attrs: Mapping[str, str]) -> Sourced[float] | None:
    remaining = parse_duration(attrs.get("Walltime.Remaining", ""))  # Torque only
    if remaining is not None:
        return _deadline_from_left(probe, remaining, "qstat Walltime.Remaining")
    limit = parse_duration(attrs.get("Resource_List.walltime", ""))
    if limit is None:
        return None
    used = parse_duration(attrs.get("resources_used.walltime", ""))
    if used is not None:
        source = "qstat Resource_List.walltime - resources_used.walltime"
        return _deadline_from_left(probe, limit - used, source)
    for key in ("start_time", "stime"):  # Torque, PBS Pro
        start = parse_local_time(attrs.get(key, ""), _PBS_TIME_FORMATS)
        if start is not None:
            return Sourced(start + limit, f"qstat {key} + Resource_List.walltime")
    return None


# --------------------------------------------------------------------------- LSF

LSF_FORMAT = "run_time time_left runtimelimit delimiter='|'"


def detect_lsf(probe: Probe) -> SystemReport | None:
    env = probe.env
    job_id = env.get("LSB_JOBID")
    if not job_id:
        return None
    index = env.get("LSB_JOBINDEX", "0")
    query_id = f"{job_id}[{index}]" if index not in ("", "0") else job_id
    cores = first_env_int(env, ("LSB_DJOB_NUMPROC", "LSB_MAX_NUM_PROCESSORS"))
    out = probe.output(["bjobs", "-o", LSF_FORMAT, "-noheader", query_id])
    deadline, unlimited = parse_bjobs(out, probe.now()) if out is not None else (None, None)
    extra = _pick_env(env, {"queue": "LSB_QUEUE", "hosts": "LSB_MCPU_HOSTS"})
    return SystemReport("lsf", query_id, "LSB_JOBID", cores, None, deadline, unlimited, extra=extra)


def parse_bjobs(text: str, now: float) -> tuple[Sourced[float] | None, str | None]:
    """``run_time|time_left|runtimelimit`` as bjobs prints them.

    ``run_time`` is ``1234 second(s)``; ``time_left`` is ``H:MM`` followed by ``L`` when
    it derives from a run limit (``E``/``X``: only an estimate); ``runtimelimit`` is minutes,
    possibly ``/host`` suffixed; ``-`` means not set.
    """
    fields = [f.strip() for f in text.strip().splitlines()[0].split("|")] if text.strip() else []
    if len(fields) != 3:
        return None, None
    run_text, left_text, limit_text = fields
    left = re.fullmatch(r"(\d+):(\d{2})\s*L", left_text)
    if left is not None:
        seconds = int(left.group(1)) * 3600 + int(left.group(2)) * 60
        return Sourced(now + seconds, "bjobs time_left"), None
    limit = re.fullmatch(r"(\d+(?:\.\d+)?)(?:/\S+)?", limit_text)
    run = re.fullmatch(r"(\d+) second\(s\)", run_text)
    if limit is not None and run is not None:
        left_s = float(limit.group(1)) * 60 - int(run.group(1))
        return Sourced(now + left_s, "bjobs runtimelimit - run_time"), None
    if limit_text == "-" and left_text == "-":
        return None, "bjobs runtimelimit"
    return None, None


# --------------------------------------------------------------------------- SGE

_SGE_TIME_FORMATS = ("%m/%d/%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", _CTIME)  # SoGE/UGE, OCS


def parse_sge_job(text: str) -> dict[str, str]:
    """``qstat -j`` ``key: value`` lines, keys' runs of spaces collapsed (``usage 1``).

    Further array tasks continue a per-task key on indented ``   <task>:`` lines.
    """
    attrs: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        task_line = re.fullmatch(r"\s+(\d+):\s*(.*)", line)
        if task_line is not None and name:
            attrs[f"{name} {task_line.group(1)}"] = task_line.group(2).strip()
            continue
        if not line or line[0].isspace() or line.startswith("="):
            continue
        key, sep, value = line.partition(":")
        if sep:
            key = " ".join(key.split())
            attrs[key] = value.strip()
            name = key.split()[0] if re.fullmatch(r"\S+ \d+", key) else ""
    return attrs


def _sge_list(text: str) -> dict[str, str]:
    pairs = (item.strip().partition("=") for item in text.split(","))
    return {k: v for k, sep, v in pairs if sep}


def detect_sge(probe: Probe) -> SystemReport | None:
    env = probe.env
    job_id = env.get("JOB_ID")
    if not job_id or not env.get("SGE_ROOT"):
        return None
    task_text = env.get("SGE_TASK_ID", "undefined")  # "undefined" outside array jobs
    task = task_text if task_text.isdigit() else None
    cores = first_env_int(env, ("NSLOTS",))
    out = probe.output(["qstat", "-j", job_id])
    deadline = None
    if out is not None:
        deadline = _sge_deadline(probe, job_id, parse_sge_job(out), task)
    extra = _pick_env(env, {"queue": "QUEUE", "cell": "SGE_CELL", "pe": "PE"})
    ref = f"{job_id}.{task}" if task else job_id
    return SystemReport("sge", ref, "JOB_ID+SGE_ROOT", cores, None, deadline, extra=extra)


def _sge_task_value(attrs: Mapping[str, str], name: str, task: str | None) -> str:
    """``<name> <task>`` (``usage 3``), else the first task's: a plain job is task 1."""
    if task is not None and f"{name} {task}" in attrs:
        return attrs[f"{name} {task}"]
    return next((v for k, v in attrs.items() if k.startswith(f"{name} ")), "")


def _sge_limit(probe: Probe, attrs: Mapping[str, str]) -> tuple[float, str] | None:
    """The job's wall-clock limit in seconds and its name, else its queue's (``qconf -sq``)."""
    limits = _sge_list(attrs.get("hard resource_list") or attrs.get("hard_resource_list") or "")
    where = ""
    if not any(name in limits for name in ("h_rt", "s_rt")):
        queue = probe.env.get("QUEUE")
        out = probe.output(["qconf", "-sq", queue]) if queue else None
        limits = parse_sge_queue(out) if out is not None else {}
        where = "queue "
    candidates = [
        (seconds, f"{where}{name}")
        for name in ("h_rt", "s_rt")  # s_rt sends SIGUSR1 first: the earlier one counts
        if (seconds := parse_duration(limits.get(name, ""))) is not None
    ]
    return min(candidates) if candidates else None


def parse_sge_queue(text: str) -> dict[str, str]:
    """``qconf -sq QUEUE``: ``name value`` lines (``INFINITY`` for no limit)."""
    pairs = (line.split(None, 1) for line in text.splitlines() if not line.startswith("#"))
    return {p[0]: p[1].strip() for p in pairs if len(p) == 2}


def parse_sge_xml_start(text: str, task: str | None) -> float | None:
    """Epoch start time of ``task`` (else of the first task) in ``qstat -j ID -xml``.

    Grid Engine 8.1 prints ``JAT_start_time`` as epoch seconds in this detailed view; an
    ISO date (the job-list view) is read in local time and milliseconds are scaled down.
    """
    from xml.etree import ElementTree  # only Grid Engine pilots pay for it

    try:
        tree = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        log.info("qstat -xml output does not parse: %s", exc)
        return None
    starts: dict[str | None, str] = {}
    for node in tree.iter():
        start = node.findtext("JAT_start_time")
        if start:
            number = (node.findtext("JAT_task_number") or "").strip()
            starts.setdefault(number or None, start.strip())
    if not starts:
        return None
    raw = starts.get(task) or next(iter(starts.values()))
    if raw.isdigit():
        value = float(raw)
        return value / 1000 if value > 1e11 else (value or None)
    return parse_local_time(raw.replace("T", " "), ["%Y-%m-%d %H:%M:%S"])


def _sge_deadline(
    probe: Probe, job_id: str, attrs: Mapping[str, str], task: str | None
) -> Sourced[float] | None:
    found = _sge_limit(probe, attrs)
    if found is None:
        return None
    limit, name = found
    used = parse_duration(_sge_list(_sge_task_value(attrs, "usage", task)).get("wallclock", ""))
    if used is not None:
        return _deadline_from_left(probe, limit - used, f"qstat {name} - usage wallclock")
    start_text = _sge_task_value(attrs, "start_time", task).split(".")[0]
    start = parse_local_time(start_text, _SGE_TIME_FORMATS)
    if start is not None:
        return Sourced(start + limit, f"qstat start_time + {name}")
    # Grid Engine 8.1's text view has no start time; its XML view has
    out = probe.output(["qstat", "-j", job_id, "-xml"])
    start = parse_sge_xml_start(out, task) if out is not None else None
    if start is not None:
        return Sourced(start + limit, f"qstat -xml JAT_start_time + {name}")
    # detection runs as the pilot starts, so "limit from now" is close and errs little
    return _deadline_from_left(probe, limit, f"qstat {name} (start unknown: from now)")


DETECTORS: tuple[Callable[[Probe], SystemReport | None], ...] = (
    # HTCondor first: its ad files exist only inside the innermost job (a glidein on a
    # Slurm node starts payloads with a clean environment plus _CONDOR_* variables).
    detect_htcondor,
    detect_slurm,
    detect_pbs,
    detect_lsf,
    detect_sge,
)


def identify(probe: Probe) -> SystemReport | None:
    """The report of the first batch system that recognises the environment."""
    for detector in DETECTORS:
        report = detector(probe)
        if report is not None:
            return report
    return None
