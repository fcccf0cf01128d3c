"""Slot filling: several jobs at once in a multi-core slot, multi-core jobs taking theirs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from pilot import agent
from pilot.backends.base import MatchedJob
from pilot.backends.local import LocalBackend
from pilot.config import PilotConfig
from pilot.job import jdl
from pilot.node import resources
from tests.conftest import FAST, Stub, run_pilot
from tests.payloads.support import new_mark, payload_jdl


def slot(cores: int = 8, memory: int | None = 16000) -> resources.ResourceDescription:
    return resources.ResourceDescription(
        site="T.Site.org",
        grid_ce="ce.example.org",
        ce_queue=None,
        vo=None,
        platform="Linux_x86_64_glibc-2.36",
        architecture="x86_64",
        number_of_processors=cores,
        max_ram_mb=memory,
        cpu_time=86400 * 10,
        wall_clock_time_left=86400,
        disk_space_mb=None,
        number_of_gpus=0,
        tags=("MultiProcessor", "WholeNode"),
        required_tags=(),
        pilot_reference="stamp",
        pilot_benchmark=10.0,
    )


def make_agent(tmp_path: Path, cores: int = 8) -> agent.Agent:
    backend = LocalBackend(tmp_path / "x.jdl", tmp_path / "out")
    return agent.Agent(PilotConfig(work_dir=tmp_path), backend, slot(cores), "stamp", agent.Stop())


@pytest.mark.parametrize(
    ("attributes", "free", "cores", "memory"),
    [
        ("", 8, 1, 2000),  # one core and its share of the slot's memory
        ("NumberOfProcessors = 2;", 8, 2, 4000),
        ("MinNumberOfProcessors = 2; MaxNumberOfProcessors = 6;", 4, 4, 8000),
        ("MinNumberOfProcessors = 2; MaxNumberOfProcessors = 6;", 8, 6, 12000),
        ("WholeNode = true;", 8, 8, 16000),
        ("NumberOfProcessors = 2; MaxRAM = 100;", 8, 2, 100),
    ],
)
def test_allocation_gives_each_job_what_it_asks_for(
    tmp_path: Path, attributes: str, free: int, cores: int, memory: int
) -> None:
    job = MatchedJob("1", jdl.dumps(jdl.parse(f'Executable = "x"; {attributes}')))
    assert make_agent(tmp_path)._allocation(job, free, 16000) == (cores, memory)


def test_offer_shows_only_what_is_free(tmp_path: Path) -> None:
    pilot = make_agent(tmp_path, cores=4)
    full = pilot._offer(4, 16000).as_dict()
    assert full["NumberOfProcessors"] == 4 and {"MultiProcessor", "WholeNode"} <= set(full["Tag"])
    runner = agent._Running(None, threading.Thread(), 3, 12000)  # type: ignore[arg-type]
    pilot.running["1"] = runner
    assert pilot._free() == (1, 4000)
    left = pilot._offer(*pilot._free()).as_dict()
    assert left["NumberOfProcessors"] == 1 and left["MaxRAM"] == 4000
    assert not {"MultiProcessor", "WholeNode"} & set(left["Tag"])


def intervals(stub: Stub, jobs: list[int], tmp: Path) -> list[tuple[float, float, int]]:
    """(start, end, cores) of each job, from the timestamps its payload printed."""
    found = []
    for job in jobs:
        assert stub.status(job) == "Done", stub.client.job(job)
        stub.client.get_output(job, tmp / str(job))
        text = (tmp / str(job) / "out").read_text()
        match = re.fullmatch(r"start=([\d.]+) end=([\d.]+) cores=(\d+)\n", text)
        assert match, text
        found.append((float(match[1]), float(match[2]), int(match[3])))
    return found


def busy_cores(spans: list[tuple[float, float, int]], at: float) -> int:
    return sum(cores for start, end, cores in spans if start <= at < end)


def test_four_cores_run_four_jobs_at_once_and_a_two_core_job_takes_two(
    stub: Stub, tmp_path: Path
) -> None:
    mark = new_mark("slots")
    two = stub.submit(payload_jdl("stamps.py", mark, 2.5, extra="NumberOfProcessors = 2;"))
    ones = [stub.submit(payload_jdl("stamps.py", mark, 2.5))[0] for _ in range(6)]
    done = run_pilot(["run", "--server", stub.url, "--cores", "4", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spans = intervals(stub, two + ones, tmp_path)
    assert spans[0][2] == 2 and {s[2] for s in spans[1:]} == {1}  # NUMBER_OF_PROCESSORS
    starts = [s[0] for s in spans]
    assert max(busy_cores(spans, t) for t in starts) == 4  # the slot was full, never over
    one_core = spans[1:]
    most = max(sum(1 for s, e, _ in one_core if s <= t < e) for t in starts)
    assert most == 4  # four 1-core jobs overlapped
    during_two = [s for s in one_core if s[0] < spans[0][1] and spans[0][0] < s[1]]
    assert len(during_two) == 2  # beside the 2-core job, only two more fitted


def test_max_concurrent_caps_the_jobs_at_once(stub: Stub, tmp_path: Path) -> None:
    mark = new_mark("slots")
    jobs = [stub.submit(payload_jdl("stamps.py", mark, 1.0))[0] for _ in range(4)]
    args = ["run", "--server", stub.url, "--cores", "4", "--max-concurrent", "2", *FAST]
    done = run_pilot(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spans = intervals(stub, jobs, tmp_path)
    assert max(busy_cores(spans, s[0]) for s in spans) == 2
    timing = stub.client.job(jobs[-1])["timing"]
    assert set(timing) >= {"match", "stage_in", "payload", "stage_out"}
    assert timing["payload"] >= 1.0 and timing["match"] < 30
