"""Batch-system detection from recorded environments and command outputs.

Recorded data lives under tests/data/batch/<system>/: ``env.json`` (the job's environment),
``commands.json`` (argv -> file holding the recorded stdout) and those output files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from pilot import proc
from pilot.node import batch
from pilot.node.batch import BatchInfo
from pilot.node.batch_systems import (
    parse_duration,
    parse_scontrol_job,
    parse_sge_xml_start,
    pbs_size_mb,
)
from pilot.proc import CommandResult

DATA = Path(__file__).parent / "data" / "batch"

# 2024-03-11: the recorded jobs started at 10:00:07 UTC (epoch 1710151207)
JOB_START = 1710151207.0
TIMEOUT = "<timeout>"  # a fake output meaning "the command hung"


def load_env(system: str) -> dict[str, str]:
    return dict(json.loads((DATA / system / "env.json").read_text()))


class FakeRun:
    """Serves recorded outputs by argv, like proc.run; unknown commands are "not found"."""

    def __init__(self, directory: Path | None = None, **overrides: str | None) -> None:
        self.outputs: dict[str, str | None] = {}
        if directory is not None and (directory / "commands.json").exists():
            table = json.loads((directory / "commands.json").read_text())
            for argv, spec in table.items():
                self.outputs[argv] = (directory / spec["stdout"]).read_text()
        self.outputs.update(overrides)  # value None: remove the command
        self.calls: list[tuple[tuple[str, ...], float]] = []

    def set(self, argv: str, output: str | None) -> None:
        self.outputs[argv] = output

    def __call__(self, argv: list[str], *, timeout: float = 10.0, **_: object) -> CommandResult:
        args = tuple(argv)
        self.calls.append((args, timeout))
        output = self.outputs.get(" ".join(args))
        if output is None:
            error = f"[Errno 2] No such file or directory: '{args[0]}'"
            return CommandResult(args, proc.NOT_FOUND, "", error, 0.0)
        if output == TIMEOUT:
            return CommandResult(args, proc.TIMED_OUT, "", "", timeout, timed_out=True)
        return CommandResult(args, 0, output, "", 0.01)

    @property
    def commands(self) -> list[str]:
        return [argv[0] for argv, _ in self.calls]


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pin the local time zone: the recorded clusters print their times in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def no_cgroup(tmp_path: Path) -> dict[str, object]:
    """detect() arguments for a node with no cgroup limits, 64 CPUs and 250 GB of RAM."""
    return {
        "cgroup_root": tmp_path / "no-cgroup",
        "proc_self_cgroup": tmp_path / "no-cgroup" / "self",
        "affinity": lambda: 64,
        "total_memory_mb": lambda: 256000,
    }


def detect_at(
    now: float, env: Mapping[str, str], run: Callable[..., CommandResult], **kwargs: object
) -> BatchInfo:
    return batch.detect(env, run=run, now=lambda: now, **kwargs)


# --------------------------------------------------------------------------- Slurm

SLURM = DATA / "slurm"
SQUEUE = "squeue -h -j 4242424 -o %L"
SCONTROL = "scontrol show job -o 4242424"
SLURM_NOW = JOB_START + 6353  # RunTime=01:45:53 in the recorded scontrol output


def test_slurm_recorded_job_uses_environment_and_squeue(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(SLURM)
    info = detect_at(SLURM_NOW, load_env("slurm"), fake, command_timeout=2.5, **no_cgroup)
    assert (info.system, info.job_id, info.reference) == ("slurm", "4242424", "slurm:4242424")
    assert (info.cores, info.memory_mb) == (8, 16000)
    assert info.wall_time_left == 123247  # 1-10:14:07
    assert info.sources == {
        "system": "SLURM_JOB_ID",
        "cores": "SLURM_CPUS_ON_NODE",
        "memory_mb": "SLURM_MEM_PER_NODE",
        "wall_time_left": "squeue %L",
    }
    assert info.extra["partition"] == "grid" and info.extra["node"] == "wn042"
    assert fake.calls == [(tuple(SQUEUE.split()), 2.5)]  # scontrol not needed


@pytest.mark.parametrize(
    ("per_node", "node_id", "cores"),
    [("4", "0", 4), ("2(x3),1", "0", 2), ("4,2", "1", 2), ("2(x3),1", "3", 1), ("6(x2)", "1", 6)],
)
def test_slurm_job_cpus_per_node_formats(
    per_node: str, node_id: str, cores: int, no_cgroup: dict[str, object]
) -> None:
    env = load_env("slurm")
    del env["SLURM_CPUS_ON_NODE"]
    env.update(SLURM_JOB_CPUS_PER_NODE=per_node, SLURM_NODEID=node_id)
    info = detect_at(SLURM_NOW, env, FakeRun(SLURM), **no_cgroup)
    assert info.cores == cores
    assert info.sources["cores"] == "SLURM_JOB_CPUS_PER_NODE"


def test_slurm_memory_per_cpu_times_cores(no_cgroup: dict[str, object]) -> None:
    env = load_env("slurm")
    del env["SLURM_MEM_PER_NODE"]
    env["SLURM_MEM_PER_CPU"] = "2500"
    info = detect_at(SLURM_NOW, env, FakeRun(SLURM), **no_cgroup)
    assert info.memory_mb == 20000
    assert info.sources["memory_mb"] == "SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE"


def test_slurm_without_memory_variables_reports_unknown(no_cgroup: dict[str, object]) -> None:
    env = load_env("slurm")
    del env["SLURM_MEM_PER_NODE"]
    info = detect_at(SLURM_NOW, env, FakeRun(SLURM), **no_cgroup)
    assert info.memory_mb is None and info.sources["memory_mb"] == "none found"


@pytest.mark.parametrize(
    ("printed", "seconds"),
    [("45:12", 2712), ("2:03:04", 7384), ("1-10:14:07", 123247), ("0:07", 7)],
)
def test_squeue_time_left_formats(printed: str, seconds: int, no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(SLURM, **{SQUEUE: printed + "\n"})
    info = detect_at(SLURM_NOW, load_env("slurm"), fake, **no_cgroup)
    assert info.wall_time_left == seconds


def test_squeue_unlimited_means_no_limit_without_asking_scontrol(
    no_cgroup: dict[str, object],
) -> None:
    fake = FakeRun(SLURM, **{SQUEUE: (SLURM / "squeue_L_unlimited.txt").read_text()})
    info = detect_at(SLURM_NOW, load_env("slurm"), fake, **no_cgroup)
    assert info.wall_time_left is None and info.time_left() is None
    assert info.sources["wall_time_left"] == "squeue %L (UNLIMITED)"
    assert fake.commands == ["squeue"]


@pytest.mark.parametrize(
    "squeue_output",
    [(SLURM / "squeue_L_invalid.txt").read_text(), "NOT_SET\n", "", TIMEOUT, None],
    ids=["INVALID", "NOT_SET", "empty", "hangs", "missing"],
)
def test_squeue_without_answer_falls_back_to_scontrol(
    squeue_output: str | None, utc: None, no_cgroup: dict[str, object]
) -> None:
    fake = FakeRun(SLURM, **{SQUEUE: squeue_output})
    info = detect_at(SLURM_NOW, load_env("slurm"), fake, **no_cgroup)
    assert info.wall_time_left == 123247  # EndTime 2024-03-12T22:00:07 - now
    assert info.sources["wall_time_left"] == "scontrol EndTime"
    assert fake.commands == ["squeue", "scontrol"]


def test_scontrol_unlimited(no_cgroup: dict[str, object]) -> None:
    unlimited = (SLURM / "scontrol_show_job_unlimited.txt").read_text()
    fake = FakeRun(SLURM, **{SQUEUE: TIMEOUT, SCONTROL: unlimited})
    info = detect_at(SLURM_NOW, load_env("slurm"), fake, **no_cgroup)
    assert info.wall_time_left is None
    assert info.sources["wall_time_left"] == "scontrol TimeLimit (UNLIMITED)"


@pytest.mark.parametrize("scontrol_output", [TIMEOUT, None, "slurm_load_jobs error: timeout\n"])
def test_both_commands_fail_then_slurm_job_end_time(
    scontrol_output: str | None, no_cgroup: dict[str, object]
) -> None:
    fake = FakeRun(SLURM, **{SQUEUE: TIMEOUT, SCONTROL: scontrol_output})
    info = detect_at(1710280807 - 1000, load_env("slurm"), fake, **no_cgroup)
    assert info.wall_time_left == 1000
    assert info.sources["wall_time_left"] == "SLURM_JOB_END_TIME"


def test_slurm_with_no_time_source_reports_unknown(no_cgroup: dict[str, object]) -> None:
    env = load_env("slurm")
    del env["SLURM_JOB_END_TIME"]
    info = detect_at(SLURM_NOW, env, FakeRun(), **no_cgroup)
    assert info.wall_time_left is None and info.sources["wall_time_left"] == "none found"
    assert (info.cores, info.memory_mb) == (8, 16000)  # the environment still counts


def test_scontrol_fallbacks_inside_its_output(utc: None) -> None:
    text = (SLURM / "scontrol_show_job.txt").read_text()
    start = datetime(2024, 3, 11, 10, 0, 7).timestamp()
    no_end = text.replace("EndTime=2024-03-12T22:00:07", "EndTime=Unknown")
    deadline, _ = parse_scontrol_job(no_end, SLURM_NOW)
    assert deadline is not None and deadline.value == start + 36 * 3600
    assert deadline.source == "scontrol StartTime + TimeLimit"
    no_start = no_end.replace("StartTime=2024-03-11T10:00:07", "StartTime=Unknown")
    deadline, _ = parse_scontrol_job(no_start, 5000.0)
    assert deadline is not None and deadline.value == 5000.0 + 36 * 3600 - 6353
    assert parse_scontrol_job("JobId=1 JobState=PENDING", 0.0) == (None, None)


# --------------------------------------------------------------------------- HTCondor

CONDOR = DATA / "htcondor"


def condor_env(job_ad: Path | None, machine_ad: Path | None) -> dict[str, str]:
    env = load_env("htcondor")
    for var, path in (("_CONDOR_JOB_AD", job_ad), ("_CONDOR_MACHINE_AD", machine_ad)):
        env[var] = str(path) if path is not None else "/nonexistent/.ad"
    return env


def test_htcondor_recorded_ads_need_no_command(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun()
    env = condor_env(CONDOR / "job.ad", CONDOR / "machine.ad")
    info = detect_at(JOB_START + 3600, env, fake, **no_cgroup)
    assert info.system == "htcondor"
    assert info.job_id == "ce503.example.org#8812341.0#1710150912"
    assert (info.cores, info.memory_mb, info.wall_time_left) == (8, 16000, 172800 - 3600)
    assert info.sources == {
        "system": "_CONDOR_JOB_AD",
        "cores": "job ad CpusProvisioned",
        "memory_mb": "job ad MemoryProvisioned",
        "wall_time_left": "job ad MaxRuntime + JobCurrentStartDate",
    }
    assert info.extra["slot"] == "slot1_7"
    assert info.extra["machine"] == "slot1_7@wn-b042.example.org"
    assert fake.calls == []


def test_htcondor_ce_ad_with_requests_and_minutes_limit(no_cgroup: dict[str, object]) -> None:
    env = condor_env(CONDOR / "job_ce.ad", None)
    info = detect_at(JOB_START + 60, env, FakeRun(), **no_cgroup)
    assert info.job_id == "osg-ce.example.edu#556677.3#1710150000"
    assert (info.cores, info.sources["cores"]) == (4, "job ad RequestCpus")
    assert info.memory_mb is None  # RequestMemory is an expression, not a number
    assert info.wall_time_left == 2880 * 60 - 60
    assert info.sources["wall_time_left"] == "job ad MaxWallTimeMins + JobStartDate"


def test_htcondor_machine_ad_fills_what_the_job_ad_lacks(
    tmp_path: Path, no_cgroup: dict[str, object]
) -> None:
    job_ad = tmp_path / ".job.ad"
    job_ad.write_text("ClusterId = 17\nProcId = 2\nRequestCpus = 1\nMaxJobRetirementTime = 0\n")
    os.utime(job_ad, (JOB_START, JOB_START))
    machine_ad = tmp_path / ".machine.ad"
    machine_ad.write_text("Cpus = 2\nMemory = 4096\nMaxJobRetirementTime = 86400\n")
    info = detect_at(JOB_START + 100, condor_env(job_ad, machine_ad), FakeRun(), **no_cgroup)
    assert info.job_id == "17.2"
    assert (info.cores, info.sources["cores"]) == (2, "machine ad Cpus")
    assert (info.memory_mb, info.sources["memory_mb"]) == (4096, "machine ad Memory")
    assert info.wall_time_left == 86400 - 100  # counted from when the starter wrote .job.ad
    assert info.sources["wall_time_left"] == "machine ad MaxJobRetirementTime + job ad mtime"


def test_leaked_condor_variable_without_ad_file_is_not_htcondor(
    no_cgroup: dict[str, object],
) -> None:
    env = {**load_env("slurm"), "_CONDOR_JOB_AD": "/nonexistent/.job.ad"}
    info = detect_at(SLURM_NOW, env, FakeRun(SLURM), **no_cgroup)
    assert info.system == "slurm"


def test_htcondor_slot_inside_slurm_allocation_is_htcondor(no_cgroup: dict[str, object]) -> None:
    env = {**load_env("slurm"), **condor_env(CONDOR / "job.ad", CONDOR / "machine.ad")}
    fake = FakeRun(SLURM)
    info = detect_at(JOB_START + 3600, env, fake, **no_cgroup)
    assert info.system == "htcondor" and fake.calls == []


# --------------------------------------------------------------------------- PBS / Torque


def test_torque_recorded_job(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(DATA / "pbs" / "torque")
    info = detect_at(JOB_START + 9000, load_env("pbs/torque"), fake, **no_cgroup)
    assert (info.system, info.job_id) == ("pbs", "987654.torque.example.org")
    assert (info.cores, info.memory_mb, info.wall_time_left) == (4, 8192, 250200)
    assert info.sources["cores"] == "PBS_NUM_PPN"
    assert info.sources["memory_mb"] == "qstat Resource_List.mem"
    assert info.sources["wall_time_left"] == "qstat Walltime.Remaining"
    assert info.extra["queue"] == "grid"
    assert fake.calls == [(("qstat", "-f", "987654.torque.example.org"), 5.0)]


def test_pbspro_recorded_job(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(DATA / "pbs" / "pbspro")
    info = detect_at(JOB_START + 3600, load_env("pbs/pbspro"), fake, **no_cgroup)
    assert (info.cores, info.sources["cores"]) == (4, "NCPUS")
    assert info.memory_mb == 4096
    assert info.wall_time_left == 24 * 3600 - 3600
    assert info.sources["wall_time_left"] == (
        "qstat Resource_List.walltime - resources_used.walltime"
    )


def test_pbspro_start_time_when_usage_not_reported_yet(
    utc: None, no_cgroup: dict[str, object]
) -> None:
    directory = DATA / "pbs" / "pbspro"
    lines = (directory / "qstat_f.txt").read_text().splitlines(keepends=True)
    output = "".join(line for line in lines if "resources_used." not in line)
    env = load_env("pbs/pbspro")
    del env["NCPUS"]
    fake = FakeRun(**{"qstat -f 5566.pbs01": output})
    info = detect_at(JOB_START + 60, env, fake, **no_cgroup)
    assert info.wall_time_left == 24 * 3600 - 60
    assert info.sources["wall_time_left"] == "qstat stime + Resource_List.walltime"
    assert (info.cores, info.sources["cores"]) == (4, "qstat Resource_List.ncpus")


@pytest.mark.parametrize("qstat", [TIMEOUT, None])
def test_pbs_without_qstat_keeps_environment(
    qstat: str | None, no_cgroup: dict[str, object]
) -> None:
    fake = FakeRun(**{"qstat -f 987654.torque.example.org": qstat})
    info = detect_at(JOB_START, load_env("pbs/torque"), fake, **no_cgroup)
    assert (info.system, info.cores, info.memory_mb, info.wall_time_left) == ("pbs", 4, None, None)
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("8gb", 8192),
        ("4096mb", 4096),
        ("1843200kb", 1800),
        ("1073741824", 1024),
        ("1073741824b", 1024),
        ("512mw", 4096),
        ("1TB", 1048576),
        ("lots", None),
        ("", None),
    ],
)
def test_pbs_sizes(text: str, mb: int | None) -> None:
    assert pbs_size_mb(text) == mb


# --------------------------------------------------------------------------- LSF

LSF = DATA / "lsf"
BJOBS = "bjobs -o run_time time_left runtimelimit delimiter='|' -noheader 31337"


def test_lsf_recorded_job(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(LSF)
    info = detect_at(JOB_START + 5400, load_env("lsf"), fake, **no_cgroup)
    assert (info.system, info.job_id) == ("lsf", "31337")
    assert (info.cores, info.sources["cores"]) == (4, "LSB_DJOB_NUMPROC")
    assert info.wall_time_left == 46 * 3600 + 30 * 60
    assert info.sources["wall_time_left"] == "bjobs time_left"
    assert info.memory_mb is None
    assert info.extra["queue"] == "grid"


def test_lsf_estimate_is_not_a_limit(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(**{BJOBS: (LSF / "bjobs_estimate.txt").read_text()})
    info = detect_at(JOB_START + 5400, load_env("lsf"), fake, **no_cgroup)
    assert info.wall_time_left == 2880 * 60 - 5400
    assert info.sources["wall_time_left"] == "bjobs runtimelimit - run_time"


def test_lsf_without_run_limit_is_unlimited(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(**{BJOBS: (LSF / "bjobs_nolimit.txt").read_text()})
    info = detect_at(JOB_START, load_env("lsf"), fake, **no_cgroup)
    assert info.wall_time_left is None
    assert info.sources["wall_time_left"] == "bjobs runtimelimit (UNLIMITED)"


def test_lsf_array_element_is_queried_with_its_index(no_cgroup: dict[str, object]) -> None:
    env = {**load_env("lsf"), "LSB_JOBINDEX": "7"}
    del env["LSB_DJOB_NUMPROC"]
    fake = FakeRun()
    info = detect_at(JOB_START, env, fake, **no_cgroup)
    assert info.job_id == "31337[7]" and fake.calls[0][0][-1] == "31337[7]"
    assert (info.cores, info.sources["cores"]) == (4, "LSB_MAX_NUM_PROCESSORS")
    assert info.wall_time_left is None  # bjobs missing


# --------------------------------------------------------------------------- SGE
# sge/: a -notify, -pe smp 2, h_rt=600 job recorded on the live test cluster
# (tests/sge/cluster.py, Grid Engine 8.1.9) by a script run as the job: its environment,
# qstat -j, qstat -j -xml, qconf -sq of its queue; it started at SGE_START.
# sge/plain/: a plain h_rt=600 job of the same Grid Engine (job 7, started SGE_PLAIN_START).
# qstat_j_ocs.txt is the Open Cluster Scheduler layout (start_time in the text view),
# written from that product's source, not recorded.

SGE = DATA / "sge"
SGE_START = 1796555506.0
SGE_PLAIN_START = 1796553970.0


def test_sge_recorded_job_learns_its_start_from_the_xml_view(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(SGE)
    info = detect_at(SGE_START + 1, load_env("sge"), fake, **no_cgroup)
    assert (info.system, info.job_id, info.reference) == ("sge", "1", "sge:1")
    assert (info.cores, info.sources["cores"]) == (2, "NSLOTS")  # -pe smp 2
    assert info.wall_time_left == 600 - 1
    assert info.sources["wall_time_left"] == "qstat -xml JAT_start_time + h_rt"
    assert info.sources["system"] == "JOB_ID+SGE_ROOT"
    assert (info.extra["queue"], info.extra["pe"]) == ("all.q", "smp")
    # the text view has neither a start time nor a wallclock usage: the XML view is asked
    assert [argv for argv, _ in fake.calls] == [("qstat", "-j", "1"), ("qstat", "-j", "1", "-xml")]


def test_sge_plain_job_recorded_elsewhere(no_cgroup: dict[str, object]) -> None:
    env = {**load_env("sge"), "JOB_ID": "7", "NSLOTS": "1", "PE": "", "PE_HOSTFILE": ""}
    info = detect_at(SGE_PLAIN_START + 250, env, FakeRun(SGE / "plain"), **no_cgroup)
    assert (info.job_id, info.cores, info.wall_time_left) == ("7", 1, 600 - 250)


def test_sge_without_xml_counts_from_now(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun(SGE, **{"qstat -j 1 -xml": None})
    info = detect_at(SGE_START + 30, load_env("sge"), fake, **no_cgroup)
    assert info.wall_time_left == 600
    assert info.sources["wall_time_left"] == "qstat h_rt (start unknown: from now)"


def test_sge_xml_that_does_not_parse_counts_from_now(no_cgroup: dict[str, object]) -> None:
    xml = (SGE / "qstat_j_xml.txt").read_text()
    fake = FakeRun(SGE, **{"qstat -j 1 -xml": xml[: len(xml) // 2]})
    info = detect_at(SGE_START + 30, load_env("sge"), fake, **no_cgroup)
    assert info.sources["wall_time_left"] == "qstat h_rt (start unknown: from now)"


def test_sge_queue_limit_when_the_job_asks_for_none(no_cgroup: dict[str, object]) -> None:
    text = (SGE / "qstat_j.txt").read_text().replace("hard resource_list:         h_rt=600\n", "")
    queue = (SGE / "qconf_sq.txt").read_text()
    assert "h_rt                  INFINITY" in queue  # as recorded: no queue limit either
    fake = FakeRun(SGE, **{"qstat -j 1": text})
    info = detect_at(SGE_START + 30, load_env("sge"), fake, **no_cgroup)
    assert info.wall_time_left is None
    assert ("qconf", "-sq", "all.q") in [argv for argv, _ in fake.calls]
    fake.set("qconf -sq all.q", queue.replace("h_rt                  INFINITY", "h_rt 01:00:00"))
    info = detect_at(SGE_START + 30, load_env("sge"), fake, **no_cgroup)
    assert info.wall_time_left == 3600 - 30
    assert info.sources["wall_time_left"] == "qstat -xml JAT_start_time + queue h_rt"


def test_sge_soft_limit_counts_when_earlier(no_cgroup: dict[str, object]) -> None:
    text = (SGE / "qstat_j.txt").read_text().replace("h_rt=600", "s_rt=500,h_rt=600")
    fake = FakeRun(SGE, **{"qstat -j 1": text})
    info = detect_at(SGE_START + 100, load_env("sge"), fake, **no_cgroup)
    assert info.wall_time_left == 400
    assert info.sources["wall_time_left"] == "qstat -xml JAT_start_time + s_rt"


def test_sge_open_cluster_scheduler_layout(utc: None, no_cgroup: dict[str, object]) -> None:
    env = {**load_env("sge"), "JOB_ID": "777001"}
    fake = FakeRun(**{"qstat -j 777001": (SGE / "qstat_j_ocs.txt").read_text()})
    info = detect_at(JOB_START + 500, env, fake, **no_cgroup)
    assert info.wall_time_left == 48 * 3600 - 500
    assert info.sources["wall_time_left"] == "qstat start_time + h_rt"


def test_sge_array_task_and_unknown_start(no_cgroup: dict[str, object]) -> None:
    env = {**load_env("sge"), "SGE_TASK_ID": "3"}
    fake = FakeRun(**{"qstat -j 1": "job_number: 1\nhard resource_list: h_rt=3600\n"})
    info = detect_at(JOB_START, env, fake, **no_cgroup)
    assert info.job_id == "1.3"
    assert info.wall_time_left == 3600
    assert info.sources["wall_time_left"] == "qstat h_rt (start unknown: from now)"


SGE_ARRAY_QSTAT = """\
==============================================================
job_number:                 777002
hard resource_list:         h_rt=7200
job-array tasks:            1-4:1
usage         2:            wallclock=00:50:00, cpu=00:49:10, mem=12.5 GBs, io=0.1, vmem=1.2G
              3:            wallclock=00:10:00, cpu=00:09:58, mem=2.5 GBs, io=0.0, vmem=1.1G
scheduling info:            (Collecting of scheduler job information is turned off)
"""


def test_sge_array_job_uses_its_own_task_usage(no_cgroup: dict[str, object]) -> None:
    """Per-task lines (layout written from the source, as no array job was recorded)."""
    env = {**load_env("sge"), "JOB_ID": "777002", "SGE_TASK_ID": "3"}
    fake = FakeRun(**{"qstat -j 777002": SGE_ARRAY_QSTAT})
    info = detect_at(JOB_START, env, fake, **no_cgroup)
    assert info.wall_time_left == 7200 - 600
    env["SGE_TASK_ID"] = "2"
    assert detect_at(JOB_START, env, fake, **no_cgroup).wall_time_left == 7200 - 3000


def test_sge_xml_start_of_the_right_task() -> None:
    xml = (SGE / "qstat_j_xml.txt").read_text()
    task = "<JAT_task_number>1</JAT_task_number>"
    start = f"<JAT_start_time>{int(SGE_START)}</JAT_start_time>"
    assert task in xml and start in xml
    two = xml.replace(
        "</JB_ja_tasks>",
        "<ulong_sublist><JAT_task_number>2</JAT_task_number>"
        "<JAT_start_time>1796559999</JAT_start_time></ulong_sublist></JB_ja_tasks>",
    )
    assert parse_sge_xml_start(two, "2") == 1796559999
    assert parse_sge_xml_start(two, None) == SGE_START
    assert (
        parse_sge_xml_start(xml.replace(start, "<JAT_start_time>0</JAT_start_time>"), None) is None
    )
    millis = xml.replace(start, f"<JAT_start_time>{int(SGE_START)}000</JAT_start_time>")
    assert parse_sge_xml_start(millis, None) == SGE_START
    assert parse_sge_xml_start("<a><b>", None) is None


def test_job_id_without_sge_root_is_not_sge(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun()
    info = detect_at(JOB_START, {"JOB_ID": "12", "PATH": "/usr/bin"}, fake, **no_cgroup)
    assert info.system == "local" and fake.calls == []


# --------------------------------------------------------------------------- Machine/Job Features


@pytest.fixture
def mjf(tmp_path: Path) -> Path:
    target = tmp_path / "mjf"
    shutil.copytree(DATA / "mjf", target)
    return target


def mjf_env(root: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(base or {"PATH": "/usr/bin:/bin"})
    env["JOBFEATURES"] = str(root / "jobfeatures")
    env["MACHINEFEATURES"] = str(root / "machinefeatures")
    return env


def test_mjf_alone_describes_a_local_slot(mjf: Path, no_cgroup: dict[str, object]) -> None:
    info = detect_at(JOB_START + 100, mjf_env(mjf), FakeRun(), **no_cgroup)
    assert info.system == "local"
    assert (info.cores, info.sources["cores"]) == (8, "jobfeatures allocated_cpu")
    assert (info.memory_mb, info.sources["memory_mb"]) == (16384, "jobfeatures max_rss_bytes")
    assert info.wall_time_left == 172800 - 100
    assert info.sources["wall_time_left"] == "jobfeatures jobstart_secs + wall_limit_secs"
    assert info.extra["mjf.job.hs06_job"] == "98.4"
    assert info.extra["mjf.machine.total_cpu"] == "64"


def test_mjf_machine_shutdown_comes_first(mjf: Path, no_cgroup: dict[str, object]) -> None:
    (mjf / "machinefeatures" / "shutdowntime").write_text(f"{int(JOB_START) + 7200}\n")
    info = detect_at(JOB_START + 100, mjf_env(mjf), FakeRun(), **no_cgroup)
    assert info.wall_time_left == 7100
    assert info.sources["wall_time_left"] == "machinefeatures shutdowntime"


def test_mjf_job_shutdown_caps_the_batch_limit(mjf: Path, no_cgroup: dict[str, object]) -> None:
    (mjf / "jobfeatures" / "shutdowntime_job").write_text(f"{int(SLURM_NOW) + 600}\n")
    info = detect_at(SLURM_NOW, mjf_env(mjf, load_env("slurm")), FakeRun(SLURM), **no_cgroup)
    assert (info.system, info.wall_time_left) == ("slurm", 600)
    assert info.sources["wall_time_left"] == "jobfeatures shutdowntime_job"
    assert (info.cores, info.sources["cores"]) == (8, "SLURM_CPUS_ON_NODE")  # tie: batch kept


def test_mjf_urls_and_missing_directories_are_ignored(no_cgroup: dict[str, object]) -> None:
    env = {"JOBFEATURES": "https://mjf.example.org/job/42", "MACHINEFEATURES": "/nonexistent"}
    info = detect_at(JOB_START, env, FakeRun(), **no_cgroup)
    assert info.wall_time_left is None and not any(k.startswith("mjf.") for k in info.extra)


# --------------------------------------------------------------------------- cgroups and affinity


def write_tree(root: Path, files: Mapping[str, str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content + "\n")


def cgroup_kwargs(tmp_path: Path, self_cgroup: str, files: Mapping[str, str]) -> dict[str, object]:
    root = tmp_path / "cgroup"
    root.mkdir()
    write_tree(root, files)
    (tmp_path / "self_cgroup").write_text(self_cgroup)
    return {
        "cgroup_root": root,
        "proc_self_cgroup": tmp_path / "self_cgroup",
        "affinity": lambda: 64,
        "total_memory_mb": lambda: 256000,
    }


SLURM_V2_JOB = "system.slice/slurmstepd.scope/job_4242424"


def test_cgroup_v2_limits_cap_the_batch_system(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path,
        f"0::/{SLURM_V2_JOB}/step_batch/user/task_0\n",
        {
            "cgroup.controllers": "cpuset cpu io memory pids",
            f"{SLURM_V2_JOB}/memory.max": str(4 * 1024**3),
            f"{SLURM_V2_JOB}/cpu.max": "200000 100000",
            f"{SLURM_V2_JOB}/step_batch/memory.max": "max",
            f"{SLURM_V2_JOB}/step_batch/cpu.max": "max 100000",
            f"{SLURM_V2_JOB}/step_batch/user/task_0/memory.max": "max",
        },
    )
    info = detect_at(SLURM_NOW, load_env("slurm"), FakeRun(SLURM), **kwargs)
    assert (info.cores, info.sources["cores"]) == (2, "cgroup v2 cpu.max")
    assert (info.memory_mb, info.sources["memory_mb"]) == (4096, "cgroup v2 memory.max")
    assert info.extra["cgroup"] == f"v2:/{SLURM_V2_JOB}/step_batch/user/task_0"


def test_cgroup_v2_unlimited_and_higher_limits_do_not_cap(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path,
        "0::/pilot.slice\n",
        {
            "cgroup.controllers": "cpu memory",
            "pilot.slice/memory.max": str(64 * 1024**3),
            "pilot.slice/cpu.max": "max 100000",
        },
    )
    info = detect_at(SLURM_NOW, load_env("slurm"), FakeRun(SLURM), **kwargs)
    assert (info.cores, info.sources["cores"]) == (8, "SLURM_CPUS_ON_NODE")
    assert (info.memory_mb, info.sources["memory_mb"]) == (16000, "SLURM_MEM_PER_NODE")
    assert "cgroup_cpu_quota" not in info.extra


def test_cgroup_v1_limits_from_controller_hierarchies(tmp_path: Path) -> None:
    job = "slurm/uid_41001/job_4242424"
    kwargs = cgroup_kwargs(
        tmp_path,
        f"12:memory:/{job}/step_batch\n4:cpu,cpuacct:/{job}/step_batch\n1:name=systemd:/\n",
        {
            f"memory/{job}/memory.limit_in_bytes": str(2 * 1024**3),
            f"memory/{job}/step_batch/memory.limit_in_bytes": "9223372036854771712",
            "memory/memory.limit_in_bytes": "9223372036854771712",
            f"cpu,cpuacct/{job}/step_batch/cpu.cfs_quota_us": "300000",
            f"cpu,cpuacct/{job}/step_batch/cpu.cfs_period_us": "100000",
            "cpu,cpuacct/cpu.cfs_quota_us": "-1",
            "cpu,cpuacct/cpu.cfs_period_us": "100000",
        },
    )
    info = detect_at(SLURM_NOW, load_env("slurm"), FakeRun(SLURM), **kwargs)
    assert (info.cores, info.sources["cores"]) == (3, "cgroup v1 cpu.cfs_quota_us")
    assert (info.memory_mb, info.sources["memory_mb"]) == (2048, "cgroup v1 memory.limit_in_bytes")
    assert info.extra["cgroup"] == f"v1:/{job}/step_batch"


def test_cgroup_v1_unlimited_does_not_cap_local_memory(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path,
        "4:memory:/user.slice\n2:cpu:/user.slice\n",
        {
            "memory/user.slice/memory.limit_in_bytes": "9223372036854771712",
            "cpu/user.slice/cpu.cfs_quota_us": "-1",
            "cpu/user.slice/cpu.cfs_period_us": "100000",
        },
    )
    info = detect_at(JOB_START, {}, FakeRun(), **kwargs)
    assert (info.system, info.cores, info.memory_mb) == ("local", 64, 256000)
    assert info.sources["memory_mb"] == "total RAM (sysconf)"


def test_fractional_cpu_quota_rounds_down(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path,
        "0::/pod\n",
        {"cgroup.controllers": "cpu memory", "pod/cpu.max": "150000 100000"},
    )
    info = detect_at(JOB_START, {}, FakeRun(), **kwargs)
    assert (info.cores, info.extra["cgroup_cpu_quota"]) == (1, "1.50")


def test_cgroup_path_outside_the_namespace_reads_only_the_root(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path,
        "0::/../escape\n",
        {
            "cgroup.controllers": "memory",
            "memory.max": str(1024**3),
            "../escape/memory.max": str(1024**2),  # must not be read
        },
    )
    info = detect_at(JOB_START, {}, FakeRun(), **kwargs)
    assert info.memory_mb == 1024


def test_cgroup_limit_caps_local_total_memory(tmp_path: Path) -> None:
    kwargs = cgroup_kwargs(
        tmp_path, "0::/c\n", {"cgroup.controllers": "memory", "c/memory.max": str(3 * 1024**3)}
    )
    info = detect_at(JOB_START, {}, FakeRun(), **kwargs)
    assert (info.memory_mb, info.sources["memory_mb"]) == (3072, "cgroup v2 memory.max")


def test_affinity_caps_batch_cores(no_cgroup: dict[str, object]) -> None:
    kwargs = {**no_cgroup, "affinity": lambda: 2}
    info = detect_at(SLURM_NOW, load_env("slurm"), FakeRun(SLURM), **kwargs)
    assert (info.cores, info.sources["cores"]) == (2, "sched_getaffinity")


def test_local_slot_uses_affinity_and_total_memory(no_cgroup: dict[str, object]) -> None:
    fake = FakeRun()
    info = detect_at(JOB_START, {"PATH": "/usr/bin"}, fake, **{**no_cgroup, "affinity": lambda: 3})
    assert (info.system, info.job_id, info.cores, info.memory_mb) == ("local", None, 3, 256000)
    assert info.wall_time_left is None
    assert info.reference == f"local:{info.extra['hostname']}:{os.getpid()}"
    assert fake.calls == []


# --------------------------------------------------------------------------- real commands


def write_script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_hanging_squeue_through_real_proc_run_degrades_to_scontrol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, utc: None, no_cgroup: dict[str, object]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir, "squeue", "sleep 30\n")
    write_script(bin_dir, "scontrol", f"cat '{SLURM / 'scontrol_show_job.txt'}'\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    started = time.monotonic()
    info = batch.detect(load_env("slurm"), now=lambda: SLURM_NOW, command_timeout=0.5, **no_cgroup)
    elapsed = time.monotonic() - started
    assert info.wall_time_left == 123247
    assert info.sources["wall_time_left"] == "scontrol EndTime"
    assert elapsed < 0.5 + 1.0  # the timeout plus 1 s, not squeue's 30 s


def test_missing_commands_through_real_proc_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_cgroup: dict[str, object]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # holds no squeue and no scontrol
    info = batch.detect(load_env("slurm"), now=lambda: 1710280807 - 42.0, **no_cgroup)
    assert info.wall_time_left == 42
    assert info.sources["wall_time_left"] == "SLURM_JOB_END_TIME"


BATCH_VARIABLES = ("SLURM_JOB_ID", "_CONDOR_JOB_AD", "PBS_JOBID", "LSB_JOBID", "SGE_ROOT")


def test_real_local_machine() -> None:
    started = time.monotonic()
    info = batch.detect()
    elapsed = time.monotonic() - started
    assert 1 <= info.cores <= (os.cpu_count() or 1)
    assert info.memory_mb is None or 0 < info.memory_mb
    if not any(var in os.environ for var in BATCH_VARIABLES):
        assert (info.system, info.job_id) == ("local", None)
        assert info.memory_mb is not None
        assert info.memory_mb <= psutil.virtual_memory().total // 2**20
        assert info.reference.startswith("local:")
    assert set(info.sources) == {"system", "cores", "memory_mb", "wall_time_left"}
    assert 0 < info.detected_at <= time.monotonic()
    assert elapsed < 1.0  # generous: the issue asks for well under 50 ms without commands


# --------------------------------------------------------------------------- BatchInfo


def test_time_left_counts_down_from_detection() -> None:
    info = BatchInfo("slurm", "1", 1, None, 50.0, detected_at=100.0)
    assert info.time_left(now=110.0) == 40.0
    assert info.time_left(now=500.0) == 0.0
    assert info.time_left(now=90.0) == 50.0  # never more than measured
    assert BatchInfo("local", None, 1, None, None, detected_at=100.0).time_left(200.0) is None
    assert BatchInfo("pbs", "2", 1, None, 30.0).time_left(1e9) == 30.0  # not stamped


def test_time_left_after_real_detection_decreases(no_cgroup: dict[str, object]) -> None:
    info = detect_at(SLURM_NOW, load_env("slurm"), FakeRun(SLURM), **no_cgroup)
    first = info.time_left()
    assert first is not None and first <= 123247
    assert info.time_left(info.detected_at + 1000) == 123247 - 1000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45:12", 2712),
        ("2:03:04", 7384),
        ("1-10:14:07", 123247),
        ("2-00", 172800),
        ("2-01:30", 178200),
        ("1:02:03:04", 93784),  # SGE days:hours:minutes:seconds
        ("300", 300),
        ("00:05:12.25", 312.25),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("", None),
        ("1-2:3:4:5", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "files",
    [
        {"c/cpu.max": "100000 0", "c/memory.max": "-1"},  # zero period, negative limit
        {"c/cpu.max": "lots", "c/memory.max": ""},
        {"c/cpu.max/x": "1", "c/memory.max/x": "1"},  # directories where files belong
    ],
)
def test_cgroup_files_holding_nonsense_do_not_cap(tmp_path: Path, files: dict[str, str]) -> None:
    kwargs = cgroup_kwargs(tmp_path, "0::/c\n", {"cgroup.controllers": "cpu memory", **files})
    info = detect_at(JOB_START, {}, FakeRun(), **kwargs)
    assert (info.cores, info.memory_mb) == (64, 256000)
    assert info.sources["memory_mb"] == "total RAM (sysconf)"
